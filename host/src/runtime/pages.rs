//! The few system calls the stack and memory arenas make (`mmap`, `mprotect`,
//! `madvise`, `munmap`, a read of `/proc/self/pagemap`), on Unix; elsewhere they fail,
//! and no arena is installed.
//! Guard markers (`MADV_GUARD_INSTALL`) are used only where a probe saw one work.

pub(crate) use imp::*;

#[cfg(unix)]
mod imp {
    use std::ops::Range;

    /// Maps `len` bytes, readable and writable, without committing them if `lazy`.
    pub(crate) fn map(len: usize, lazy: bool) -> std::io::Result<usize> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if lazy {
            flags |= libc::MAP_NORESERVE;
        }
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(base as usize)
    }

    /// Reserves `len` bytes of address space, inaccessible; returns its address.
    pub(crate) fn reserve(len: usize) -> std::io::Result<usize> {
        // SAFETY: a fresh anonymous mapping at an address the kernel picks.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // Give the whole mapping its kernel bookkeeping for anonymous pages now, by
        // faulting in one page of it: each slot later split off shares it. Slots split
        // off before any fault would each get their own on first use, and the kernel
        // never merges neighbours whose bookkeeping differs: parked slots would stay a
        // mapping each.
        let page = page_size();
        let first = base as usize..base as usize + page;
        if protect(&first, true).is_ok() {
            // SAFETY: the page was just made accessible, and nothing else refers to it.
            unsafe { std::ptr::write_volatile(base.cast::<u8>(), 0) };
            discard(&first);
            // The page is the first slot's guard: it must not stay accessible.
            if let Err(e) = protect(&first, false) {
                release(base as usize, len);
                return Err(e);
            }
        }
        Ok(base as usize)
    }

    /// Unmaps what [`reserve`] mapped.
    pub(crate) fn release(base: usize, len: usize) {
        // SAFETY: `base..base + len` is an arena this module mapped, with no stack left.
        unsafe {
            libc::munmap(base as *mut libc::c_void, len);
        }
    }

    /// Makes `range` accessible (`true`) or not.
    pub(crate) fn protect(range: &Range<usize>, accessible: bool) -> std::io::Result<()> {
        let prot = if accessible {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_NONE
        };
        // SAFETY: the range is a stack slot of an arena this module mapped and owns; no
        // code runs on it while it changes (see `Slot`).
        if unsafe { libc::mprotect(range.start as *mut libc::c_void, range.len(), prot) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Gives a slot's pages back to the kernel: on Linux it reads as zeros after.
    pub(crate) fn discard(range: &Range<usize>) {
        // SAFETY: as for `protect`; MADV_DONTNEED on private anonymous memory only drops
        // pages.
        unsafe {
            libc::madvise(
                range.start as *mut libc::c_void,
                range.len(),
                libc::MADV_DONTNEED,
            );
        }
    }

    /// `MADV_GUARD_INSTALL` (Linux 6.13, `asm-generic/mman-common.h`, the header of
    /// these architectures): the pages of a range fault on any access from then on,
    /// `MADV_DONTNEED` leaves them so, and the mapping is not split.
    const MADV_GUARD_INSTALL: Option<libc::c_int> = if cfg!(all(
        target_os = "linux",
        any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        )
    )) {
        Some(102)
    } else {
        None
    };

    /// Makes `range` (whole pages of an accessible private anonymous mapping) a guard:
    /// any access to it faults, and the mapping stays one.
    pub(crate) fn install_guard(range: &Range<usize>) -> std::io::Result<()> {
        let Some(advice) = MADV_GUARD_INSTALL else {
            return Err(std::io::Error::other("guard markers need Linux 6.13"));
        };
        // SAFETY: the range is a page this module mapped to be a guard (an arena's, or the
        // probe's); nothing is stored in it.
        if unsafe { libc::madvise(range.start as *mut libc::c_void, range.len(), advice) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes each of `ranges` a guard, as [`install_guard`] does, in as few system calls
    /// as the kernel allows: one `process_madvise` on this process (Linux 6.13, which
    /// has guard markers, lets a process give itself any advice), else one `madvise`
    /// each (where that call is missing or filtered out, say by a seccomp policy).
    pub(crate) fn install_guards(ranges: &[Range<usize>]) -> std::io::Result<()> {
        let bytes: usize = ranges.iter().map(|r| r.len()).sum();
        if let Some(advice) = MADV_GUARD_INSTALL
            && bytes > 0
            && advise_self(ranges, advice) == Some(bytes)
        {
            return Ok(());
        }
        // Installing a marker twice is harmless, so a partial batch is simply redone.
        ranges.iter().try_for_each(install_guard)
    }

    /// `process_madvise` of `ranges` on this process, through a pidfd of its own: the
    /// bytes advised, `None` if the calls failed.
    #[cfg(target_os = "linux")]
    fn advise_self(ranges: &[Range<usize>], advice: libc::c_int) -> Option<usize> {
        let vectors: Vec<libc::iovec> = ranges
            .iter()
            .map(|r| libc::iovec {
                iov_base: r.start as *mut libc::c_void,
                iov_len: r.len(),
            })
            .collect();
        // SAFETY: pidfd_open of this process's own id, no flags; the descriptor is
        // closed below.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0) };
        let pidfd = libc::c_int::try_from(pidfd).ok().filter(|fd| *fd >= 0)?;
        // SAFETY: the vectors name pages this module mapped to be guards (see
        // `install_guard`); the kernel reads the vector array, `vectors.len()` long.
        let advised = unsafe {
            libc::syscall(
                libc::SYS_process_madvise,
                pidfd,
                vectors.as_ptr(),
                vectors.len(),
                advice,
                0,
            )
        };
        // SAFETY: the descriptor pidfd_open returned, closed once.
        unsafe { libc::close(pidfd) };
        usize::try_from(advised).ok()
    }

    #[cfg(not(target_os = "linux"))]
    fn advise_self(_ranges: &[Range<usize>], _advice: libc::c_int) -> Option<usize> {
        None
    }

    /// Whether the kernel charges every writable private mapping in full against its
    /// commit limit (`vm.overcommit_memory` = 2, where `MAP_NORESERVE` is ignored).
    pub(crate) fn commits_every_mapping() -> bool {
        std::fs::read_to_string("/proc/sys/vm/overcommit_memory").is_ok_and(|s| s.trim() == "2")
    }

    /// Whether guard markers work here, probed once: a page is made a guard, then the
    /// kernel is asked to read it (a `write` of it to a pipe), which must fail. The read
    /// matters: an emulator (qemu's user mode) may accept the advice and ignore it.
    pub(crate) fn guard_markers_work() -> bool {
        static WORK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *WORK.get_or_init(probe_guard_markers)
    }

    fn probe_guard_markers() -> bool {
        let page = page_size();
        let Ok(base) = map(2 * page, false) else {
            return false;
        };
        let works = install_guard(&(base..base + page)).is_ok()
            && readable(base) == Some(false)
            && readable(base + page) == Some(true);
        release(base, 2 * page);
        works
    }

    /// Whether the kernel can read the byte at `address` for this process (it is asked
    /// to write it to a pipe, and fails with `EFAULT` where it cannot); `None` if no pipe
    /// could be made (or not on Linux). No signal is raised either way.
    #[cfg(target_os = "linux")]
    pub(crate) fn readable(address: usize) -> Option<bool> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes; close-on-exec, so
        // that a process another thread starts meanwhile inherits neither.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return None;
        }
        // SAFETY: the kernel checks that it may read `address` itself and fails the
        // write if it may not; the pipe has room for one byte.
        let wrote = unsafe { libc::write(fds[1], address as *const libc::c_void, 1) };
        let error = std::io::Error::last_os_error();
        // SAFETY: the two descriptors pipe returned, closed once.
        unsafe {
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
        match wrote {
            1 => Some(true),
            _ if error.raw_os_error() == Some(libc::EFAULT) => Some(false),
            _ => None,
        }
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn readable(_address: usize) -> Option<bool> {
        None
    }

    /// Which pages of `range` (whole pages of a private anonymous mapping) are in
    /// memory, from this process's `/proc/self/pagemap` (a flag word per page): `None`
    /// where that cannot be read, and when a page of the range is swapped out (its
    /// bytes are on the swap device, and only dropping the page makes it read as zeros).
    /// A page neither present nor swapped reads as zeros.
    #[cfg(target_os = "linux")]
    pub(crate) fn resident_pages(range: &Range<usize>) -> Option<Vec<bool>> {
        use std::os::unix::fs::FileExt;
        const PRESENT: u64 = 1 << 63;
        const SWAPPED: u64 = 1 << 62;
        // Opened once, with the id of the process it describes: a forked child would
        // read its parent's pages through it.
        static PAGEMAP: std::sync::OnceLock<Option<(u32, std::fs::File)>> =
            std::sync::OnceLock::new();
        let (pid, file) = PAGEMAP
            .get_or_init(|| {
                let file = std::fs::File::open("/proc/self/pagemap").ok()?;
                Some((std::process::id(), file))
            })
            .as_ref()?;
        if *pid != std::process::id() {
            return None;
        }
        let page = page_size();
        let words = range.len() / page;
        let mut bytes = vec![0u8; words.checked_mul(8)?];
        let offset = u64::try_from(range.start / page).ok()?.checked_mul(8)?;
        file.read_exact_at(&mut bytes, offset).ok()?;
        bytes
            .chunks_exact(8)
            .map(|word| {
                let flags = u64::from_ne_bytes(word.try_into().ok()?);
                (flags & SWAPPED == 0).then_some(flags & PRESENT != 0)
            })
            .collect()
    }

    #[cfg(not(target_os = "linux"))]
    pub(crate) fn resident_pages(_range: &Range<usize>) -> Option<Vec<bool>> {
        None
    }

    pub(crate) fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(page).unwrap_or(4096).max(4096)
    }
}

#[cfg(not(unix))]
mod imp {
    use std::ops::Range;

    pub(crate) fn map(_len: usize, _lazy: bool) -> std::io::Result<usize> {
        Err(std::io::Error::other("arenas need Unix"))
    }

    pub(crate) fn reserve(_len: usize) -> std::io::Result<usize> {
        Err(std::io::Error::other("stack arenas need Unix"))
    }

    pub(crate) fn release(_base: usize, _len: usize) {}

    pub(crate) fn protect(_range: &Range<usize>, _accessible: bool) -> std::io::Result<()> {
        Err(std::io::Error::other("stack arenas need Unix"))
    }

    pub(crate) fn discard(_range: &Range<usize>) {}

    pub(crate) fn install_guards(_ranges: &[Range<usize>]) -> std::io::Result<()> {
        Err(std::io::Error::other("guard markers need Linux"))
    }

    pub(crate) fn guard_markers_work() -> bool {
        false
    }

    pub(crate) fn commits_every_mapping() -> bool {
        false
    }

    pub(crate) fn readable(_address: usize) -> Option<bool> {
        None
    }

    pub(crate) fn resident_pages(_range: &Range<usize>) -> Option<Vec<bool>> {
        None
    }

    pub(crate) fn page_size() -> usize {
        4096
    }
}
