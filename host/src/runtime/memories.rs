//! Compact linear memories from arenas of accessible slots.
//!
//! A compact memory (`--compact-memory`) has no reservation and no guard region: its
//! accesses are bounds-checked in code against its current size. wasmtime maps each one
//! on its own, exactly as large as it is, so `memory.grow` maps a larger copy and unmaps
//! the old one (a TLB shoot-down on every other CPU each time), and a host spawning
//! many instances spends its time in the kernel.
//!
//! Here each memory is a slot of an arena: 64 slots of the host's default memory limit,
//! in one readable and writable mapping reserved without commitment (`MAP_NORESERVE`):
//! a slot's pages cost memory only once touched. Growing within the slot is free; a
//! memory that outgrows its slot moves to a mapping of its own. A freed slot gives its
//! touched pages back (`MADV_DONTNEED`, so it reads as zeros again) and is reused.
//!
//! One exception keeps page faults off a recovery's path, bounded: a few freed slots
//! stay warm. A slot whose memory left at most [`WARM_PAGES`] pages in memory (and none
//! swapped out, read from `/proc/self/pagemap`) has those pages zeroed in place, and is
//! the next slot handed out: the replacement of an ended instance then instantiates on
//! pages already there, where otherwise its data segments' copy would fault each page
//! in again (and the `MADV_DONTNEED` would be a TLB shoot-down on the other CPUs running
//! this process). At most [`MAX_WARM`] slots are warm, so they hold at most
//! `MAX_WARM × WARM_PAGES` pages.
//! Slots beyond a memory's size are accessible but never reached: the compiled code
//! checks every access against the size, as it does for wasmtime's own compact
//! memories, whose neighbours are accessible too.
//!
//! Installed on Linux with compact memories and no instance pool.

use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Slots per arena mapping.
const SLOTS_PER_ARENA: usize = 64;

/// Most freed slots kept warm (their few pages zeroed in place, kept in memory), handed
/// out before any other.
const MAX_WARM: usize = 4;

/// Most pages a freed slot may hold in memory to be kept warm: zeroing more by hand
/// would cost more than the faults it saves. (A small guest's instance touches a dozen:
/// the top of its stack, its data, the start of its heap.)
const WARM_PAGES: usize = 32;

/// Largest memory whose slot may be kept warm: reading which of its pages are in memory
/// costs 8 bytes per page.
const WARM_MAX_BYTES: usize = 16 << 20;

/// A source of compact linear memories (see the module documentation).
pub struct MemoryArena {
    inner: Arc<Inner>,
}

struct Inner {
    /// Bytes of one slot (a multiple of the page size).
    slot_len: usize,
    page: usize,
    free: Mutex<Free>,
    /// Memories handed out, in slots or on their own.
    memories: AtomicUsize,
}

#[derive(Default)]
struct Free {
    slots: Vec<usize>,
    /// Freed slots whose pages in memory were zeroed in place (see [`MAX_WARM`]).
    warm: Vec<usize>,
    arenas: Vec<(usize, usize)>,
}

impl MemoryArena {
    /// An arena of slots of `slot_len` bytes (rounded up to whole pages).
    pub fn new(slot_len: usize) -> Self {
        let page = super::pages::page_size();
        Self {
            inner: Arc::new(Inner {
                slot_len: slot_len.div_ceil(page).max(1).saturating_mul(page),
                page,
                free: Mutex::new(Free::default()),
                memories: AtomicUsize::new(0),
            }),
        }
    }

    /// Memories handed out and not yet dropped.
    pub fn memories(&self) -> usize {
        self.inner.memories.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Free> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free slot's address, reserving a new arena when none is free.
    fn take_slot(&self) -> std::io::Result<usize> {
        let mut free = self.lock();
        if let Some(slot) = free.warm.pop().or_else(|| free.slots.pop()) {
            return Ok(slot);
        }
        let len = self
            .slot_len
            .checked_mul(SLOTS_PER_ARENA)
            .ok_or_else(|| std::io::Error::other("memory arena size overflows"))?;
        let base = super::pages::map(len, true)?;
        free.arenas.push((base, len));
        free.slots
            .extend((1..SLOTS_PER_ARENA).rev().map(|i| base + i * self.slot_len));
        Ok(base)
    }

    fn round_up(&self, bytes: usize) -> Option<usize> {
        bytes.checked_next_multiple_of(self.page)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // No memory is left (each holds the arena).
        for &(base, len) in &self.lock().arenas {
            super::pages::release(base, len);
        }
    }
}

/// Where a memory's bytes are.
enum Backing {
    /// A slot of the arena, at this address.
    Slot(usize),
    /// A mapping of its own (the memory outgrew a slot): address and length.
    Own(usize, usize),
}

/// One linear memory.
struct ArenaMemory {
    inner: Arc<Inner>,
    backing: Backing,
    /// The memory's size in bytes.
    len: usize,
}

impl ArenaMemory {
    fn base(&self) -> usize {
        match self.backing {
            Backing::Slot(base) | Backing::Own(base, _) => base,
        }
    }

    fn capacity(&self) -> usize {
        match self.backing {
            Backing::Slot(_) => self.inner.slot_len,
            Backing::Own(_, len) => len,
        }
    }

    /// The pages this memory may have touched.
    fn touched(&self) -> Range<usize> {
        let end = self.inner.round_up(self.len).unwrap_or(self.capacity());
        self.base()..self.base() + end.min(self.capacity())
    }

    /// Gives the backing back: a slot's touched pages to the kernel (or, kept warm,
    /// zeroed in place; see [`MAX_WARM`]) and the slot to the arena, a mapping of its own
    /// to the kernel.
    fn release(&self) {
        match self.backing {
            Backing::Slot(base) => {
                let touched = self.touched();
                let room = self.inner.lock().warm.len() < MAX_WARM;
                if room && zero_in_place(&touched, self.inner.page) {
                    let mut free = self.inner.lock();
                    if free.warm.len() < MAX_WARM {
                        free.warm.push(base);
                        return;
                    }
                }
                super::pages::discard(&touched);
                self.inner.lock().slots.push(base);
            }
            Backing::Own(base, len) => super::pages::release(base, len),
        }
    }
}

/// Zeroes the pages of `range` (a freed slot's touched pages) that are in memory, if
/// they are few and none is swapped out; `false` (nothing written) otherwise. Pages that
/// read as zeros already are only read, so that a page the guest only read (the kernel's
/// shared zero page) is not made a page of its own.
fn zero_in_place(range: &Range<usize>, page: usize) -> bool {
    if range.len() > WARM_MAX_BYTES {
        return false;
    }
    let Some(resident) = super::pages::resident_pages(range) else {
        return false;
    };
    if resident.iter().filter(|r| **r).count() > WARM_PAGES {
        return false;
    }
    for (index, _) in resident.iter().enumerate().filter(|(_, r)| **r) {
        // SAFETY: a whole page of the slot this memory held, accessible; the memory is
        // being dropped, so nothing else reads or writes it.
        let bytes = unsafe {
            std::slice::from_raw_parts_mut((range.start + index * page) as *mut u8, page)
        };
        if bytes.iter().any(|b| *b != 0) {
            bytes.fill(0);
        }
    }
    true
}

// SAFETY: the memory's addresses are plain numbers; its bytes are owned by this memory
// (a slot no other memory is handed until this one is dropped, or a mapping of its own).
unsafe impl wasmtime::LinearMemory for ArenaMemory {
    fn byte_size(&self) -> usize {
        self.len
    }

    fn byte_capacity(&self) -> usize {
        self.capacity()
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if new_size <= self.capacity() {
            // Accessible already, and zero: growing is a new size.
            self.len = self.len.max(new_size);
            return Ok(());
        }
        // Outgrown: a mapping of its own, with room to double, and the bytes copied.
        let wanted = new_size
            .checked_mul(2)
            .and_then(|n| self.inner.round_up(n))
            .ok_or_else(|| wasmtime::format_err!("memory size {new_size} overflows"))?;
        let base = super::pages::map(wanted, false)
            .map_err(|e| wasmtime::format_err!("cannot map {wanted} bytes of memory: {e}"))?;
        // SAFETY: both ranges are mapped and accessible; the new one is fresh, the old
        // one is this memory's own, `len` bytes long; they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base() as *const u8, base as *mut u8, self.len);
        }
        self.release();
        self.backing = Backing::Own(base, wanted);
        self.len = new_size;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base() as *mut u8
    }
}

impl Drop for ArenaMemory {
    fn drop(&mut self) {
        self.release();
        self.inner.memories.fetch_sub(1, Ordering::Relaxed);
    }
}

// SAFETY: every memory handed out is zero-filled (a fresh or discarded slot, or a fresh
// mapping), page-aligned, and at least `minimum` bytes long; it is created only without
// a guard region (compact memories), so no access relies on unmapped space after it.
unsafe impl wasmtime::MemoryCreator for MemoryArena {
    fn new_memory(
        &self,
        _ty: wasmtime::MemoryType,
        minimum: usize,
        _maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn wasmtime::LinearMemory>, String> {
        let inner = &self.inner;
        if guard_size_in_bytes > 0 {
            return Err(format!(
                "a memory arena has no guard regions ({guard_size_in_bytes} bytes asked)"
            ));
        }
        let needed = minimum.max(reserved_size_in_bytes.unwrap_or(0));
        // A memory larger than a slot, or one made when no arena can be reserved (a
        // kernel that commits every mapping, say), gets a mapping of its own.
        let slot = (needed <= inner.slot_len)
            .then(|| inner.take_slot().ok())
            .flatten();
        let backing = match slot {
            Some(base) => Backing::Slot(base),
            None => {
                let len = inner
                    .round_up(needed.max(1))
                    .ok_or_else(|| format!("memory size {needed} overflows"))?;
                Backing::Own(
                    super::pages::map(len, false).map_err(|e| e.to_string())?,
                    len,
                )
            }
        };
        inner.memories.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(ArenaMemory {
            inner: inner.clone(),
            backing,
            len: minimum,
        }))
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::super::pages;
    use super::*;
    use wasmtime::MemoryCreator;

    fn memory(arena: &MemoryArena, minimum: usize) -> Box<dyn wasmtime::LinearMemory> {
        let ty = wasmtime::MemoryType::new(1, None);
        arena
            .new_memory(ty, minimum, None, None, 0)
            .expect("a memory")
    }

    #[test]
    fn a_memory_grows_in_its_slot_then_out_of_it_and_a_freed_slot_reads_zero() {
        let arena = MemoryArena::new(256 << 10);
        let mut m = memory(&arena, 64 << 10);
        let base = m.as_ptr();
        // SAFETY: within the memory's size.
        unsafe { *base.add(100) = 7 };
        m.grow_to(128 << 10).expect("in the slot");
        assert_eq!(m.as_ptr(), base, "growth within the slot does not move it");
        assert_eq!(m.byte_size(), 128 << 10);
        m.grow_to(1 << 20).expect("out of the slot");
        assert_ne!(m.as_ptr(), base);
        // SAFETY: within the memory's size, moved with its contents.
        assert_eq!(unsafe { *m.as_ptr().add(100) }, 7);
        assert!(m.byte_capacity() >= 1 << 20);
        assert_eq!(arena.memories(), 1);
        drop(m);
        assert_eq!(arena.memories(), 0);
        // The slot comes back (it was given back when the memory moved), zeroed.
        let again = memory(&arena, 64 << 10);
        assert_eq!(again.as_ptr(), base);
        // SAFETY: within the memory's size.
        assert_eq!(unsafe { *again.as_ptr().add(100) }, 0);
    }

    /// Writes `value` to a byte of each of `pages` of the memory at `base`.
    fn write_pages(base: usize, pages: impl IntoIterator<Item = usize>, value: u8) {
        let page = pages::page_size();
        for index in pages {
            // SAFETY: the callers name pages within the memory's size.
            unsafe { *((base + index * page + 5) as *mut u8) = value };
        }
    }

    /// Whether every byte of `len` bytes at `base` is zero.
    fn reads_zero(base: usize, len: usize) -> bool {
        // SAFETY: the callers name a live memory's bytes.
        unsafe { std::slice::from_raw_parts(base as *const u8, len) }
            .iter()
            .all(|b| *b == 0)
    }

    #[test]
    fn a_freed_slot_with_few_pages_in_memory_stays_warm_and_reads_zero() {
        let arena = MemoryArena::new(256 << 10);
        let m = memory(&arena, 64 << 10);
        let base = m.as_ptr() as usize;
        write_pages(base, [0, 3, 9], 0xAB);
        drop(m);
        let again = memory(&arena, 64 << 10);
        assert_eq!(again.as_ptr() as usize, base);
        // (Read before the bytes are: a read maps the kernel's zero page.)
        let resident = pages::resident_pages(&(base..base + (64 << 10)));
        assert!(
            reads_zero(base, 64 << 10),
            "what the last memory wrote is gone"
        );
        let Some(resident) = resident else {
            // No pagemap to read here: the slot was given back to the kernel instead.
            assert!(arena.inner.lock().warm.is_empty());
            return;
        };
        // Zeroed in place: its pages are still there, no fault needed to use them.
        assert!(resident[0] && resident[3] && resident[9], "{resident:?}");
        assert_eq!(resident.iter().filter(|r| **r).count(), 3);
    }

    #[test]
    fn a_freed_slot_with_many_pages_in_memory_gives_them_back() {
        let arena = MemoryArena::new(256 << 10);
        let page = pages::page_size();
        let pages = (256 << 10) / page;
        assert!(pages > WARM_PAGES);
        let m = memory(&arena, 256 << 10);
        let base = m.as_ptr() as usize;
        write_pages(base, 0..pages, 1);
        drop(m);
        assert!(arena.inner.lock().warm.is_empty());
        let again = memory(&arena, 256 << 10);
        assert_eq!(again.as_ptr() as usize, base);
        if let Some(resident) = pages::resident_pages(&(base..base + (256 << 10))) {
            assert!(resident.iter().all(|r| !r), "dropped, not zeroed by hand");
        }
        assert!(reads_zero(base, 256 << 10));
    }

    #[test]
    fn at_most_max_warm_freed_slots_stay_warm() {
        let arena = MemoryArena::new(64 << 10);
        let memories: Vec<_> = (0..MAX_WARM + 3)
            .map(|_| memory(&arena, 64 << 10))
            .collect();
        let bases: Vec<usize> = memories.iter().map(|m| m.as_ptr() as usize).collect();
        for &base in &bases {
            write_pages(base, [1], 7);
        }
        drop(memories);
        let warm = arena.inner.lock().warm.len();
        let Some(_) = pages::resident_pages(&(bases[0]..bases[0] + 4096)) else {
            assert_eq!(warm, 0);
            return;
        };
        assert_eq!(warm, MAX_WARM);
        let page = pages::page_size();
        let in_memory = bases
            .iter()
            .filter(|&&b| pages::resident_pages(&(b + page..b + 2 * page)).is_some_and(|r| r[0]))
            .count();
        assert_eq!(in_memory, MAX_WARM, "the others gave their page back");
        for &base in &bases {
            assert!(reads_zero(base, 64 << 10));
        }
    }

    #[test]
    fn a_memory_larger_than_a_slot_gets_a_mapping_of_its_own_and_guards_are_refused() {
        let arena = MemoryArena::new(64 << 10);
        let big = memory(&arena, 256 << 10);
        assert!(big.byte_capacity() >= 256 << 10);
        // SAFETY: within the memory's size.
        unsafe { *big.as_ptr().add((256 << 10) - 1) = 1 };
        let ty = wasmtime::MemoryType::new(1, None);
        assert!(arena.new_memory(ty, 64 << 10, None, None, 4096).is_err());
    }
}
