//! Fiber stacks that cost no memory mapping while their instance is idle.
//!
//! Every async call into a guest runs on a fiber stack, and a Store keeps its stack from
//! one call to the next. wasmtime's own stacks are one mapping each plus a guard page,
//! so two memory mappings per instance for as long as it lives: 100,000 idle reactors
//! would need 200,000 mappings, three times the kernel's default `vm.max_map_count`.
//!
//! Here stacks are slots of a few large arenas, every slot a guard page and its stack,
//! all `PROT_NONE` while free. A slot in use is made readable and writable only while
//! guest code may run on it: a [`Parking`] future (the wrapper of every call into an
//! instance) makes it accessible before each poll, and inaccessible again ("parks" it)
//! after, whether the call returned or waits in a host call: the only accessible stacks
//! are those of guests running at this moment. A parked slot has its guard's protection, so it merges with
//! its neighbours into one mapping: an arena costs one mapping plus two for each slot
//! whose guest is running or suspended mid-call. A stack parked after its call ended
//! also gives its pages back to the kernel (the next call starts on zeroed pages).
//!
//! A stack is tied to its Store's [`StackLease`] when wasmtime asks for it, which it
//! does inside the first poll of the Store's first call: the poll names its lease in a
//! thread-local, and [`StackArena::new_stack`] reads it. A stack asked for outside a
//! [`Parking`] poll (a policy plugin's, an HTTP instance's) has no lease and is never
//! parked: it behaves as wasmtime's own.
//!
//! The engine takes its stacks from an arena on Linux only (a freed slot relies on
//! `MADV_DONTNEED` zeroing its pages); elsewhere wasmtime allocates them itself, and a
//! lease never holds a stack.

use std::cell::RefCell;
use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

/// Slots per arena mapping: with 1.5 MiB stacks, 96 MiB of address space each (all of it
/// `PROT_NONE`, so none of it committed) and one mapping more per 64 instances.
const SLOTS_PER_ARENA: usize = 64;

/// What the stacks of a runtime cost, read by the mapping guard and the benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Stacks handed to Stores and not yet given back.
    pub stacks: usize,
    /// Of those, the ones accessible now (a guest runs on them, or is suspended mid-call,
    /// or a call is about to start on them).
    pub unparked: usize,
    /// Arena mappings reserved.
    pub arenas: usize,
}

impl StackStats {
    /// The memory mappings the stacks cost at most: one per arena, two per accessible
    /// slot (it splits its arena's inaccessible mapping in three).
    pub fn mappings(&self) -> usize {
        self.arenas.saturating_add(self.unparked.saturating_mul(2))
    }
}

/// A source of fiber stacks for one engine (see the module documentation).
pub struct StackArena {
    inner: Arc<ArenaInner>,
}

struct ArenaInner {
    /// Bytes of one stack (a multiple of the page size), without its guard page.
    stack_len: usize,
    page: usize,
    /// Free slots, by the address of their guard page.
    free: Mutex<Vec<usize>>,
    stacks: AtomicUsize,
    unparked: AtomicUsize,
    arenas: AtomicUsize,
}

impl StackArena {
    /// An arena for stacks of `stack_len` bytes (rounded up to whole pages).
    pub fn new(stack_len: usize) -> Self {
        let page = os::page_size();
        Self {
            inner: Arc::new(ArenaInner {
                stack_len: stack_len.div_ceil(page).saturating_mul(page),
                page,
                free: Mutex::new(Vec::new()),
                stacks: AtomicUsize::new(0),
                unparked: AtomicUsize::new(0),
                arenas: AtomicUsize::new(0),
            }),
        }
    }

    /// What the stacks cost now.
    pub fn stats(&self) -> StackStats {
        self.inner.stats()
    }

    /// A handle on the counters (the arena itself goes to the engine).
    pub(crate) fn watcher(&self) -> StackWatcher {
        StackWatcher(self.inner.clone())
    }
}

/// Reads a [`StackArena`]'s counters after the arena went to the engine.
#[derive(Clone)]
pub(crate) struct StackWatcher(Arc<ArenaInner>);

impl StackWatcher {
    pub(crate) fn stats(&self) -> StackStats {
        self.0.stats()
    }
}

impl ArenaInner {
    fn stats(&self) -> StackStats {
        StackStats {
            stacks: self.stacks.load(Ordering::Relaxed),
            unparked: self.unparked.load(Ordering::Relaxed),
            arenas: self.arenas.load(Ordering::Relaxed),
        }
    }

    fn slot_len(&self) -> usize {
        self.page.saturating_add(self.stack_len)
    }

    fn lock_free(&self) -> MutexGuard<'_, Vec<usize>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free slot's guard address, reserving a new arena when none is free.
    fn take_slot(&self) -> std::io::Result<usize> {
        let mut free = self.lock_free();
        if let Some(slot) = free.pop() {
            return Ok(slot);
        }
        let slot_len = self.slot_len();
        let len = slot_len
            .checked_mul(SLOTS_PER_ARENA)
            .ok_or_else(|| std::io::Error::other("stack arena size overflows"))?;
        let base = os::reserve(len)?;
        self.arenas.fetch_add(1, Ordering::Relaxed);
        // Hand out the lowest slots first, so the ones in use cluster.
        free.extend((1..SLOTS_PER_ARENA).rev().map(|i| base + i * slot_len));
        Ok(base)
    }
}

/// The stack part of the slot whose guard page is at `guard`.
fn stack_range(inner: &ArenaInner, guard: usize) -> Range<usize> {
    let start = guard + inner.page;
    start..start + inner.stack_len
}

/// One stack slot in use: shared by the stack wasmtime holds and its Store's lease.
struct Slot {
    inner: Arc<ArenaInner>,
    guard: usize,
    state: Mutex<SlotState>,
}

#[derive(Debug, Default)]
struct SlotState {
    parked: bool,
    /// Given back to the arena (the Store dropped its stack): the lease leaves it alone.
    freed: bool,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes the stack accessible, if it was parked. A failure (the kernel out of memory
    /// for its page tables) is fatal: code is about to run on this stack.
    fn unpark(&self) {
        let mut state = self.lock();
        if state.freed || !state.parked {
            return;
        }
        if let Err(e) = os::protect(&stack_range(&self.inner, self.guard), true) {
            // Nothing can run on an inaccessible stack, and nothing can be told: stop
            // loudly rather than fault on it.
            eprintln!(
                "setpoint: cannot make a fiber stack accessible again ({e}); memory mappings \
                 in use: {:?} of vm.max_map_count {:?}",
                super::mappings::in_use(),
                super::mappings::limit()
            );
            std::process::abort();
        }
        state.parked = false;
        self.inner.unparked.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes the stack inaccessible; `drop_pages` also gives its pages back (only for a
    /// stack no call is suspended on). A failure leaves it accessible, as wasmtime's are.
    fn park(&self, drop_pages: bool) {
        let mut state = self.lock();
        if state.freed || state.parked {
            return;
        }
        let range = stack_range(&self.inner, self.guard);
        if drop_pages {
            os::discard(&range);
        }
        if os::protect(&range, false).is_ok() {
            state.parked = true;
            self.inner.unparked.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// The stack wasmtime holds for a Store.
struct ArenaStack(Arc<Slot>);

// SAFETY: the slot's addresses are plain numbers; the memory they name is owned by the
// arena, and only the fiber running on it touches it.
unsafe impl wasmtime::StackMemory for ArenaStack {
    fn top(&self) -> *mut u8 {
        stack_range(&self.0.inner, self.0.guard).end as *mut u8
    }

    fn range(&self) -> Range<usize> {
        stack_range(&self.0.inner, self.0.guard)
    }

    fn guard_range(&self) -> Range<*mut u8> {
        self.0.guard as *mut u8..(self.0.guard + self.0.inner.page) as *mut u8
    }
}

impl Drop for ArenaStack {
    fn drop(&mut self) {
        let slot = &self.0;
        let mut state = slot.lock();
        let range = stack_range(&slot.inner, slot.guard);
        os::discard(&range);
        if !state.parked {
            // A slot that cannot be made inaccessible again is not reused: its
            // stack stays as wasmtime's own would have been, mapped.
            if os::protect(&range, false).is_err() {
                state.freed = true;
                slot.inner.unparked.fetch_sub(1, Ordering::Relaxed);
                slot.inner.stacks.fetch_sub(1, Ordering::Relaxed);
                return;
            }
            slot.inner.unparked.fetch_sub(1, Ordering::Relaxed);
        }
        state.freed = true;
        slot.inner.stacks.fetch_sub(1, Ordering::Relaxed);
        slot.inner.lock_free().push(slot.guard);
    }
}

// SAFETY: every stack handed out is a page-aligned slot with a guard page below it,
// zero-filled (fresh, or discarded when it was given back).
unsafe impl wasmtime::StackCreator for StackArena {
    fn new_stack(
        &self,
        size: usize,
        _zeroed: bool,
    ) -> Result<Box<dyn wasmtime::StackMemory>, wasmtime::Error> {
        let inner = &self.inner;
        if size > inner.stack_len {
            return Err(wasmtime::format_err!(
                "a fiber stack of {size} bytes was asked of an arena of {}-byte stacks",
                inner.stack_len
            ));
        }
        let guard = inner
            .take_slot()
            .map_err(|e| wasmtime::format_err!("cannot reserve fiber stacks: {e}"))?;
        if let Err(e) = os::protect(&stack_range(inner, guard), true) {
            inner.lock_free().push(guard);
            return Err(wasmtime::format_err!(
                "cannot make a fiber stack accessible: {e}"
            ));
        }
        inner.stacks.fetch_add(1, Ordering::Relaxed);
        inner.unparked.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            inner: inner.clone(),
            guard,
            state: Mutex::new(SlotState::default()),
        });
        LEASING.with(|leasing| {
            if let Some(lease) = leasing.borrow().as_ref() {
                *lease.lock() = Some(slot.clone());
            }
        });
        Ok(Box::new(ArenaStack(slot)))
    }
}

thread_local! {
    /// The lease of the Store whose call this thread is polling, if a [`Parking`] polls it.
    static LEASING: RefCell<Option<StackLease>> = const { RefCell::new(None) };
}

/// A Store's claim on its fiber stack: parks it between polls of its calls.
#[derive(Clone, Default)]
pub(crate) struct StackLease(Arc<Mutex<Option<Arc<Slot>>>>);

impl StackLease {
    fn lock(&self) -> MutexGuard<'_, Option<Arc<Slot>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn unpark(&self) {
        if let Some(slot) = self.lock().as_ref() {
            slot.unpark();
        }
    }

    fn park(&self, drop_pages: bool) {
        if let Some(slot) = self.lock().as_ref() {
            slot.park(drop_pages);
        }
    }
}

/// What a [`Parking`] call does with its stack's pages when it returns. Each time the
/// call waits (suspended in a host call, such as a sleep) its stack is parked with its
/// pages kept: so only the stacks of guests running at this moment are accessible, as
/// many as there are threads polling them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Park {
    /// They stay (a spare's first call starts without faulting them in again).
    KeepPages,
    /// They go back to the kernel (a reactor idle between calls).
    DropPages,
}

pin_project_lite::pin_project! {
    /// A call into a guest (`inner`) whose Store's stack is accessible only while the
    /// call is polled or dropped (see the module documentation). `finished`: the call
    /// returned, its fiber is gone, and dropping it runs nothing.
    pub(crate) struct Parking<F> {
        #[pin]
        inner: F,
        lease: StackLease,
        park: Park,
        finished: bool,
    }

    impl<F> PinnedDrop for Parking<F> {
        fn drop(this: Pin<&mut Self>) {
            // Dropping a suspended call resumes its fiber to unwind it.
            if !this.finished {
                this.lease.unpark();
            }
        }
    }
}

/// Wraps a call into the Store that holds `lease`.
pub(crate) fn parking<F: Future>(lease: &StackLease, park: Park, inner: F) -> Parking<F> {
    Parking {
        inner,
        lease: lease.clone(),
        park,
        finished: false,
    }
}

/// Restores the thread's previous lease, even if the poll panics.
struct Leasing(Option<StackLease>);

impl Drop for Leasing {
    fn drop(&mut self) {
        let previous = self.0.take();
        LEASING.with(|leasing| *leasing.borrow_mut() = previous);
    }
}

impl<F: Future> Future for Parking<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        this.lease.unpark();
        let previous = LEASING.with(|leasing| leasing.replace(Some(this.lease.clone())));
        let restore = Leasing(previous);
        let result = this.inner.poll(cx);
        drop(restore);
        *this.finished = result.is_ready();
        this.lease
            .park(result.is_ready() && *this.park == Park::DropPages);
        result
    }
}

/// The system calls, on Unix; elsewhere the arena is never installed.
#[cfg(unix)]
mod os {
    use std::ops::Range;

    /// Reserves `len` bytes of address space, inaccessible; returns its address.
    pub(super) fn reserve(len: usize) -> std::io::Result<usize> {
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
        Ok(base as usize)
    }

    /// Makes `range` accessible (`true`) or not.
    pub(super) fn protect(range: &Range<usize>, accessible: bool) -> std::io::Result<()> {
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
    pub(super) fn discard(range: &Range<usize>) {
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

    pub(super) fn page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(page).unwrap_or(4096).max(4096)
    }
}

#[cfg(not(unix))]
mod os {
    use std::ops::Range;

    pub(super) fn reserve(_len: usize) -> std::io::Result<usize> {
        Err(std::io::Error::other("stack arenas need Unix"))
    }

    pub(super) fn protect(_range: &Range<usize>, _accessible: bool) -> std::io::Result<()> {
        Err(std::io::Error::other("stack arenas need Unix"))
    }

    pub(super) fn discard(_range: &Range<usize>) {}

    pub(super) fn page_size() -> usize {
        4096
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::StackCreator;

    #[test]
    fn a_parked_stack_keeps_its_contents_and_a_freed_one_reads_zero() {
        let arena = StackArena::new(64 << 10);
        let lease = StackLease::default();
        let previous = LEASING.with(|l| l.replace(Some(lease.clone())));
        let stack = arena.new_stack(64 << 10, true).expect("a stack");
        LEASING.with(|l| *l.borrow_mut() = previous);
        let range = stack.range();
        assert_eq!(range.len(), 64 << 10);
        assert_eq!(arena.stats().unparked, 1);
        // SAFETY: the stack is accessible and this test owns it.
        unsafe { *((range.end - 8) as *mut u64) = 0xfeed };
        lease.park(false);
        assert_eq!(
            arena.stats(),
            StackStats {
                stacks: 1,
                unparked: 0,
                arenas: 1
            }
        );
        lease.unpark();
        // SAFETY: unparked again.
        assert_eq!(unsafe { *((range.end - 8) as *const u64) }, 0xfeed);
        lease.park(true);
        drop(stack);
        assert_eq!(arena.stats().stacks, 0);
        // The same slot comes back, zeroed, and unleased: parking it is not asked.
        let again = arena.new_stack(64 << 10, true).expect("a stack");
        assert_eq!(again.range(), range);
        // SAFETY: accessible, owned.
        assert_eq!(unsafe { *((range.end - 8) as *const u64) }, 0);
        assert_eq!(arena.stats().mappings(), 1 + 2);
        // A lease whose stack was given back does nothing.
        lease.unpark();
        assert_eq!(arena.stats().unparked, 1);
    }

    #[test]
    fn a_stack_larger_than_the_arenas_is_refused() {
        let arena = StackArena::new(64 << 10);
        assert!(arena.new_stack(128 << 10, true).is_err());
        assert_eq!(arena.stats().stacks, 0);
    }
}
