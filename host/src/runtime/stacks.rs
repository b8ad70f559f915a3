//! Fiber stacks that cost no memory mapping while their instance is idle.
//!
//! Every async call into a guest runs on a fiber stack, and a Store keeps its stack from
//! one call to the next. wasmtime's own stacks are one mapping each plus a guard page,
//! so two memory mappings per instance for as long as it lives: 100,000 idle reactors
//! would need 200,000 mappings, three times the kernel's default `vm.max_map_count`.
//!
//! Here stacks are slots of a few large arenas, every slot a guard page and its stack.
//! How a guard page is kept inaccessible decides the rest ([`Guards`]):
//!
//! - **Guard markers** (Linux 6.13 on, probed once at start): an arena is one readable
//!   and writable mapping, reserved without commitment, and each slot's guard page gets
//!   a marker (`MADV_GUARD_INSTALL`) that faults on any access without splitting the
//!   mapping. A slot never changes protection, so an arena is one mapping whatever its
//!   slots do, and taking, waking or freeing a stack costs no `mprotect`. Spawning
//!   100,000 instances made about one `mprotect` each before (the call splits the
//!   arena's mapping, which was most of its cost); now none.
//! - **Protection** (older kernels, emulators that accept the marker and ignore it, and
//!   strict overcommit, which would charge an accessible arena in full):
//!   slots are `PROT_NONE` while free. A slot in use is accessible only while guest code
//!   may run on it, or has just run, and idle slots are made inaccessible again
//!   ("parked") so that they merge with their neighbours: an arena costs one mapping
//!   plus two for each slot accessible. Each arena faults one page in when it is
//!   reserved, so that the kernel's bookkeeping of its anonymous pages is one for all
//!   its slots (slots that differ there never merge).
//!
//! Either way a [`Parking`] future (the wrapper of every call into an instance) marks
//! its stack running before each poll and idle after, whether the call returned or
//! waits in a host call. The epoch thread's ticks (1 ms) park the slots idle for a whole
//! tick, adjacent ones in one system call (see [`StackSweeper`]); a guest woken within a
//! tick or two costs no system call, and past 1,024 idle slots waiting, a slot is parked
//! at once. A stack parked after its call ended gives its pages back to the kernel (the
//! next call starts on zeroed pages); with protection, parking also takes its access
//! away, and waking it gives it back.
//!
//! One exception keeps system calls off a recovery's path, bounded: a few freed slots
//! stay warm (accessible, pages kept) for the next stacks asked for, so an ended
//! instance's stack is its replacement's with no call made. Every call that drops pages
//! or takes access away is a TLB shoot-down on the other CPUs running this process, and
//! on a virtual machine each of those is an exit to the hypervisor. Freed slots beyond
//! the warm ones go back through the sweeper, which drops their pages and parks them
//! with their neighbours before it returns them to the free slots: a scale-down of
//! thousands costs a few calls per tick, not two per instance.
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

/// Slots per arena mapping: with 1.5 MiB stacks, 96 MiB of address space each (none of it
/// committed until touched) and one mapping more per 64 instances.
const SLOTS_PER_ARENA: usize = 64;

/// Most stacks waiting for the sweeper: past it, a stack is parked at once by the thread
/// that rests it, so idle stacks holding pages (and with protection, two mappings each)
/// stay few however fast instances are spawned or woken.
const MAX_QUEUED: usize = 1024;

/// Most freed slots kept warm: accessible, their pages resident, for the next stack asked
/// for. A stack freed and taken again (an instance ended and its replacement started, as
/// in every recovery) then costs no system call; otherwise its pages would be dropped
/// (and with protection, it made inaccessible: each call a TLB shoot-down on the other
/// CPUs running this process), then its pages faulted in again. Bounded: at most this
/// many stacks' worth of memory (a guest rarely touches more than a few pages of its
/// 1.5 MiB) and, with protection, two mappings each.
const MAX_WARM: usize = 4;

/// How an arena keeps its slots' guard pages inaccessible.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guards {
    /// Guard markers (`MADV_GUARD_INSTALL`, Linux 6.13 on): each arena is one accessible
    /// mapping whose guard pages fault on any access without splitting it, so a stack
    /// never changes protection: taking, resting, parking and waking one costs no
    /// `mprotect`, and an arena is one mapping whatever its slots do. Parking a slot
    /// only gives its pages back, when asked to.
    Markers,
    /// Protection: slots are `PROT_NONE` while free or parked, and a slot in use splits
    /// its arena's mapping (where guard markers are missing: older kernels, emulators).
    Protection,
}

impl Guards {
    /// Markers where the kernel has them (probed once), protection elsewhere, and
    /// where the kernel charges every writable mapping in full (`vm.overcommit_memory`
    /// 2 ignores `MAP_NORESERVE`): an accessible arena would then be charged its 96 MiB
    /// up front, where protection charges only the stacks made accessible.
    pub fn detect() -> Self {
        if super::pages::guard_markers_work() && !super::pages::commits_every_mapping() {
            Self::Markers
        } else {
            Self::Protection
        }
    }
}

/// What the stacks of a runtime cost, read by the mapping guard and the benches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    /// Stacks handed to Stores and not yet given back.
    pub stacks: usize,
    /// Of those, the ones accessible now (a guest runs on them, or they wait for the
    /// sweeper to park them).
    pub unparked: usize,
    /// Arena mappings reserved.
    pub arenas: usize,
    /// Whether the guard pages are markers ([`Guards::Markers`]): an accessible slot
    /// then splits no mapping.
    pub guard_markers: bool,
}

impl StackStats {
    /// The memory mappings the stacks cost at most: one per arena, and with protection
    /// two per accessible slot (it splits its arena's inaccessible mapping in three).
    pub fn mappings(&self) -> usize {
        if self.guard_markers {
            return self.arenas;
        }
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
    guards: Guards,
    /// Free slots, by the address of their guard page, and the arenas' mappings.
    free: Mutex<Free>,
    /// Slots to park, and the sweeper that parks them.
    sweep: Arc<Sweep>,
    stacks: AtomicUsize,
    unparked: AtomicUsize,
    arenas: AtomicUsize,
}

#[derive(Default)]
struct Free {
    /// Slots free, their pages given back (with protection, inaccessible too).
    slots: Vec<usize>,
    /// Slots accessible, their pages kept (at most [`MAX_WARM`]): reused first. Their
    /// stacks hold what the last guest's native frames left, as wasmtime's own pooled
    /// stacks do (it zeroes a reused stack only when asked, see `new_stack`).
    warm: Vec<usize>,
    /// Each arena's base address and length, unmapped when the arena goes.
    arenas: Vec<(usize, usize)>,
}

/// The slots whose guests stopped running, parked by the epoch thread's ticks (see
/// [`StackSweeper`]).
#[derive(Default)]
struct Sweep {
    queue: Mutex<SweepQueue>,
}

impl Sweep {
    fn lock(&self) -> MutexGuard<'_, SweepQueue> {
        lock(&self.queue)
    }
}

/// Two generations: a tick parks the slots queued before the last tick (idle at least a
/// tick), so a guest woken again within a tick or two costs no system call.
#[derive(Default)]
struct SweepQueue {
    /// Queued since the last tick.
    recent: Vec<Arc<Slot>>,
    /// Queued before it: the next tick parks them.
    older: Vec<Arc<Slot>>,
    /// The sweeper ticks no more (its runtime is gone): a slot is parked at once.
    finished: bool,
}

impl SweepQueue {
    fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
}

impl StackArena {
    /// An arena for stacks of `stack_len` bytes (rounded up to whole pages), its guards
    /// markers where the kernel has them ([`Guards::detect`]).
    pub fn new(stack_len: usize) -> Self {
        Self::with_guards(stack_len, Guards::detect())
    }

    /// An arena whose guards are `guards`; markers only where [`Guards::detect`] finds
    /// them working, protection elsewhere.
    pub(crate) fn with_guards(stack_len: usize, guards: Guards) -> Self {
        let guards = match guards {
            Guards::Markers => Guards::detect(),
            Guards::Protection => Guards::Protection,
        };
        let page = super::pages::page_size();
        Self {
            inner: Arc::new(ArenaInner {
                stack_len: stack_len.div_ceil(page).saturating_mul(page),
                page,
                guards,
                free: Mutex::new(Free::default()),
                sweep: Arc::default(),
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

    /// The handle that parks idle stacks, for a thread that ticks.
    pub(crate) fn sweeper(&self) -> StackSweeper {
        StackSweeper(self.inner.sweep.clone())
    }
}

/// Parks the stacks idle for at least a tick: the epoch thread calls
/// [`StackSweeper::tick`] at each of its ticks (1 ms by default), so no thread of its own
/// wakes, and nothing wakes anyone when a stack goes idle. Adjacent slots are parked in
/// one system call.
#[derive(Clone)]
pub(crate) struct StackSweeper(Arc<Sweep>);

impl StackSweeper {
    /// Parks the slots queued before the last tick that are still idle.
    pub(crate) fn tick(&self) {
        let slots = {
            let mut queue = self.0.lock();
            if queue.len() == 0 {
                return;
            }
            let recent = std::mem::take(&mut queue.recent);
            std::mem::replace(&mut queue.older, recent)
        };
        // A slot rested, ran and rested again is queued twice: once is enough (its lock
        // is taken once). A slot given back and handed out again is two.
        park_sorted(slots);
    }

    /// Parks every slot queued, and from now on each slot rested or freed at once: the
    /// queue holds its slots and they their arena, so a queue no tick drains would keep
    /// the arena's mappings (and a freeing slot's pages) for the life of the process.
    /// Called when the runtime's ticks stop.
    pub(crate) fn finish(&self) {
        let slots = {
            let mut queue = self.0.lock();
            queue.finished = true;
            let mut slots = std::mem::take(&mut queue.older);
            slots.append(&mut queue.recent);
            slots
        };
        park_sorted(slots);
    }
}

/// Parks `slots`, each once, adjacent ones together.
fn park_sorted(mut slots: Vec<Arc<Slot>>) {
    slots.sort_unstable_by_key(|s| (s.guard, Arc::as_ptr(s) as usize));
    slots.dedup_by(|a, b| Arc::ptr_eq(a, b));
    park_all(&slots);
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
            guard_markers: self.guards == Guards::Markers,
        }
    }

    /// Whether slots change protection as they are taken, parked and woken.
    fn protects(&self) -> bool {
        self.guards == Guards::Protection
    }

    /// Maps an arena of `len` bytes: with markers, accessible with a guard marker on
    /// each slot's first page; with protection, all inaccessible.
    fn map_arena(&self, len: usize) -> std::io::Result<usize> {
        if self.protects() {
            return super::pages::reserve(len);
        }
        let base = super::pages::map(len, true)?;
        let guards: Vec<Range<usize>> = (0..SLOTS_PER_ARENA)
            .map(|i| base + i * self.slot_len())
            .map(|guard| guard..guard + self.page)
            .collect();
        if let Err(e) = super::pages::install_guards(&guards) {
            super::pages::release(base, len);
            return Err(e);
        }
        Ok(base)
    }

    fn slot_len(&self) -> usize {
        self.page.saturating_add(self.stack_len)
    }

    fn lock_free(&self) -> MutexGuard<'_, Free> {
        lock(&self.free)
    }

    /// A free slot's guard address and whether it is warm (accessible already; its
    /// pages dropped first if `zeroed`), reserving a new arena when none is free.
    fn take_slot(&self, zeroed: bool) -> std::io::Result<(usize, bool)> {
        let mut free = self.lock_free();
        if let Some(slot) = free.warm.pop() {
            drop(free);
            if zeroed {
                super::pages::discard(&stack_range(self, slot));
            }
            return Ok((slot, true));
        }
        if let Some(slot) = free.slots.pop() {
            return Ok((slot, false));
        }
        let slot_len = self.slot_len();
        let len = slot_len
            .checked_mul(SLOTS_PER_ARENA)
            .ok_or_else(|| std::io::Error::other("stack arena size overflows"))?;
        let base = self.map_arena(len)?;
        free.arenas.push((base, len));
        self.arenas.fetch_add(1, Ordering::Relaxed);
        // Hand out the lowest slots first, so the ones in use cluster.
        free.slots
            .extend((1..SLOTS_PER_ARENA).rev().map(|i| base + i * slot_len));
        Ok((base, false))
    }
}

impl Drop for ArenaInner {
    fn drop(&mut self) {
        // No slot is left (each holds the arena): nothing runs on these mappings.
        for &(base, len) in &self.lock_free().arenas {
            super::pages::release(base, len);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Accessible, a guest may run on it.
    Running,
    /// Accessible, nothing runs on it: the sweeper parks it (and gives its pages back,
    /// if `drop_pages`), unless a guest runs on it again first.
    Idle { drop_pages: bool },
    /// Parked (with protection, inaccessible); `pages`: it kept its pages (a call is
    /// suspended on it, or a command's), else they went back to the kernel when it was
    /// parked.
    Parked { pages: bool },
    /// Given back while accessible, with no room among the warm ones: the sweeper drops
    /// its pages and parks it with its neighbours, then returns it to the free slots.
    Freeing,
    /// Given back to the arena (the Store dropped its stack): the lease leaves it alone.
    Freed,
}

/// Makes `range` accessible, retrying for up to 100 ms: at the kernel's mapping limit
/// (which the mapping guard keeps the host short of, but memories growing or files
/// mapped may reach) another instance's end or a parked neighbour soon frees the two
/// mappings this needs.
fn protect_retrying(range: &Range<usize>) -> std::io::Result<()> {
    let mut tries = 0;
    loop {
        match super::pages::protect(range, true) {
            Ok(()) => return Ok(()),
            Err(_) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        lock(&self.state)
    }

    /// Makes the stack accessible for a guest about to run on it. A failure that lasts
    /// (the kernel out of mappings or of memory for page tables) is fatal: code is about
    /// to run on this stack.
    fn run(&self) {
        let mut state = self.lock();
        match *state {
            SlotState::Running | SlotState::Freeing | SlotState::Freed => return,
            SlotState::Idle { .. } => {}
            SlotState::Parked { .. } if !self.inner.protects() => {
                self.inner.unparked.fetch_add(1, Ordering::Relaxed);
            }
            SlotState::Parked { .. } => {
                if let Err(e) = protect_retrying(&stack_range(&self.inner, self.guard)) {
                    // Nothing can run on an inaccessible stack, and nothing can be told:
                    // stop loudly rather than fault on it.
                    eprintln!(
                        "setpoint: cannot make a fiber stack accessible again ({e}); memory \
                         mappings in use: {:?} of vm.max_map_count {:?}",
                        super::mappings::in_use(),
                        super::mappings::limit()
                    );
                    std::process::abort();
                }
                self.inner.unparked.fetch_add(1, Ordering::Relaxed);
            }
        }
        *state = SlotState::Running;
    }

    /// Marks the stack idle, for the sweeper to park; `drop_pages` only for a stack no
    /// call is suspended on.
    fn rest(self: &Arc<Self>, drop_pages: bool) {
        let mut state = self.lock();
        match *state {
            SlotState::Running => {}
            // Already queued: a later rest may only keep more.
            SlotState::Idle { drop_pages: queued } => {
                *state = SlotState::Idle {
                    drop_pages: queued && drop_pages,
                };
                return;
            }
            SlotState::Parked { .. } | SlotState::Freeing | SlotState::Freed => return,
        }
        *state = SlotState::Idle { drop_pages };
        self.queue(state);
    }

    /// Hands the slot, idle or freeing (`state`, locked), to the sweeper; past
    /// [`MAX_QUEUED`] waiting, or once the sweeper finished, parks it at once.
    fn queue(self: &Arc<Self>, state: MutexGuard<'_, SlotState>) {
        let mut queue = self.inner.sweep.lock();
        if queue.finished || queue.len() >= MAX_QUEUED {
            drop(queue);
            let mut run = vec![(self, state)];
            park_run(&mut run);
            return;
        }
        drop(state);
        queue.recent.push(self.clone());
    }
}

/// Parks the slots still idle, adjacent ones in one call (sorted by address).
fn park_all(slots: &[Arc<Slot>]) {
    let mut run: Vec<(&Arc<Slot>, MutexGuard<'_, SlotState>)> = Vec::new();
    for slot in slots {
        let state = slot.lock();
        if !matches!(*state, SlotState::Idle { .. } | SlotState::Freeing) {
            continue;
        }
        let adjacent = run.last().is_some_and(|(last, _)| {
            Arc::ptr_eq(&last.inner, &slot.inner)
                && last.guard.checked_add(slot.inner.slot_len()) == Some(slot.guard)
        });
        if !adjacent {
            park_run(&mut run);
        }
        run.push((slot, state));
    }
    park_run(&mut run);
}

/// Parks a run of adjacent idle or freeing slots whose locks are held: the pages of
/// those that want it dropped (a freeing slot's always), then, with protection, one
/// protection change over the run (its guard pages between are inaccessible already);
/// the freeing ones then go back to the free slots.
fn park_run(run: &mut Vec<(&Arc<Slot>, MutexGuard<'_, SlotState>)>) {
    let (Some(first), Some(last)) = (run.first().map(|r| r.0), run.last().map(|r| r.0)) else {
        return;
    };
    let inner = &first.inner;
    let whole = stack_range(inner, first.guard).start..stack_range(inner, last.guard).end;
    // Adjacent slots whose pages go are given back in one call too.
    let mut dropping: Option<Range<usize>> = None;
    for (slot, state) in run.iter() {
        let range = stack_range(inner, slot.guard);
        let drop_pages = matches!(
            **state,
            SlotState::Idle { drop_pages: true } | SlotState::Freeing
        );
        match (drop_pages, &mut dropping) {
            (true, Some(pending)) if pending.end + inner.page == range.start => {
                pending.end = range.end;
            }
            (true, _) => {
                if let Some(pending) = dropping.replace(range) {
                    super::pages::discard(&pending);
                }
            }
            _ => {
                if let Some(pending) = dropping.take() {
                    super::pages::discard(&pending);
                }
            }
        }
    }
    if let Some(pending) = dropping {
        super::pages::discard(&pending);
    }
    let parked = !inner.protects() || super::pages::protect(&whole, false).is_ok();
    let (mut left, mut freed) = (0, Vec::new());
    for (slot, state) in run.iter_mut() {
        match (**state, parked) {
            (SlotState::Freeing, true) => {
                **state = SlotState::Freed;
                freed.push(slot.guard);
                left += 1;
            }
            // A slot that cannot be made inaccessible again is not reused: it stays
            // mapped, as wasmtime's own stacks would have been.
            (SlotState::Freeing, false) => {
                **state = SlotState::Freed;
                left += 1;
            }
            (was, true) => {
                **state = SlotState::Parked {
                    pages: !matches!(was, SlotState::Idle { drop_pages: true }),
                };
                left += 1;
            }
            // Left accessible, as wasmtime's own stacks are; marked running so that no
            // later rest queues them again for nothing until a guest ran.
            (_, false) => **state = SlotState::Running,
        }
    }
    inner.unparked.fetch_sub(left, Ordering::Relaxed);
    if !freed.is_empty() {
        inner.lock_free().slots.extend(freed);
    }
    run.clear();
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
        let was = std::mem::replace(&mut *state, SlotState::Freed);
        slot.inner.stacks.fetch_sub(1, Ordering::Relaxed);
        if !matches!(was, SlotState::Parked { .. }) {
            // Still accessible: kept warm for the next stack while there is room (it
            // stays counted as unparked).
            let mut free = slot.inner.lock_free();
            if free.warm.len() < MAX_WARM {
                free.warm.push(slot.guard);
                return;
            }
            drop(free);
            // Otherwise the sweeper gives it back with its neighbours (many instances
            // ending at once, as in a scale-down, cost a few calls, not two each). An
            // idle slot is queued already.
            *state = SlotState::Freeing;
            if was == SlotState::Running {
                slot.queue(state);
            }
            return;
        }
        // Parked: its pages go now unless they went when it was parked (a reactor idle
        // between calls, or one stopped before its end).
        if was == (SlotState::Parked { pages: true }) {
            super::pages::discard(&stack_range(&slot.inner, slot.guard));
        }
        drop(state);
        slot.inner.lock_free().slots.push(slot.guard);
    }
}

// SAFETY: every stack handed out is a page-aligned slot with a guard page below it,
// accessible, and zero-filled (fresh, or discarded when it was given back) unless it is a
// warm one and wasmtime did not ask for a zeroed stack.
unsafe impl wasmtime::StackCreator for StackArena {
    fn new_stack(
        &self,
        size: usize,
        zeroed: bool,
    ) -> Result<Box<dyn wasmtime::StackMemory>, wasmtime::Error> {
        let inner = &self.inner;
        if size > inner.stack_len {
            return Err(wasmtime::format_err!(
                "a fiber stack of {size} bytes was asked of an arena of {}-byte stacks",
                inner.stack_len
            ));
        }
        let (guard, warm) = inner
            .take_slot(zeroed)
            .map_err(|e| wasmtime::format_err!("cannot reserve fiber stacks: {e}"))?;
        if !warm {
            if inner.protects()
                && let Err(e) = super::pages::protect(&stack_range(inner, guard), true)
            {
                inner.lock_free().slots.push(guard);
                return Err(wasmtime::format_err!(
                    "cannot make a fiber stack accessible: {e}"
                ));
            }
            inner.unparked.fetch_add(1, Ordering::Relaxed);
        }
        inner.stacks.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            inner: inner.clone(),
            guard,
            state: Mutex::new(SlotState::Running),
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
        lock(&self.0)
    }

    /// Makes the Store's stack accessible for a guest about to run.
    fn unpark(&self) {
        if let Some(slot) = self.lock().as_ref() {
            slot.run();
        }
    }

    /// Hands the Store's stack to the sweeper to park (see [`Park`]); `drop_pages` only
    /// for a stack no call is suspended on.
    pub(crate) fn park(&self, drop_pages: bool) {
        if let Some(slot) = self.lock().as_ref() {
            slot.rest(drop_pages);
        }
    }
}

/// What a [`Parking`] call does with its stack when it returns. Each time the call waits
/// (suspended in a host call, such as a sleep) its stack is marked idle with its pages
/// kept, for the sweeper to park: so the only accessible stacks are those of guests
/// running now or idle for less than two ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Park {
    /// The stack is left as it is: its caller parks it if it has to wait (an
    /// instantiation, whose instance is often started at once).
    Stay,
    /// It is marked idle, its pages kept (a command's call, which returns when it ends).
    KeepPages,
    /// It is marked idle, and its pages go back to the kernel when it is parked (a
    /// reactor idle between calls).
    DropPages,
}

pin_project_lite::pin_project! {
    /// A call into a guest (`inner`) whose Store's stack is accessible only while the
    /// call is polled or dropped (see the module documentation). `suspended`: the call
    /// was polled and has not returned, so its fiber waits on the stack, and dropping
    /// the call resumes it to unwind.
    pub(crate) struct Parking<F> {
        #[pin]
        inner: F,
        lease: StackLease,
        park: Park,
        suspended: bool,
    }

    impl<F> PinnedDrop for Parking<F> {
        fn drop(this: Pin<&mut Self>) {
            if this.suspended {
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
        suspended: false,
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
        *this.suspended = result.is_pending();
        match (result.is_ready(), *this.park) {
            (true, Park::Stay) => {}
            (true, Park::DropPages) => this.lease.park(true),
            _ => this.lease.park(false),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::StackCreator;

    /// The guard kinds this machine has: protection always, markers where the kernel
    /// has them (a machine without them tests protection alone, and says so).
    fn kinds() -> Vec<Guards> {
        if Guards::detect() == Guards::Markers {
            vec![Guards::Protection, Guards::Markers]
        } else {
            eprintln!("no guard markers on this kernel: stack arenas tested with protection only");
            vec![Guards::Protection]
        }
    }

    /// Ticks the sweeper twice (a slot is parked at the second tick after it rested),
    /// and checks the arena's counters then.
    fn wait_for(arena: &StackArena, want: StackStats) {
        arena.sweeper().tick();
        arena.sweeper().tick();
        assert_eq!(arena.stats(), want);
    }

    #[test]
    fn a_parked_stack_keeps_its_contents_and_a_freed_one_reads_zero() {
        for kind in kinds() {
            let arena = StackArena::with_guards(64 << 10, kind);
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
            let parked = StackStats {
                stacks: 1,
                unparked: 0,
                arenas: 1,
                guard_markers: kind == Guards::Markers,
            };
            wait_for(&arena, parked);
            lease.unpark();
            assert_eq!(arena.stats().unparked, 1);
            // SAFETY: unparked again.
            assert_eq!(unsafe { *((range.end - 8) as *const u64) }, 0xfeed);
            // Rested, run and rested again before the sweeper came: queued twice, parked once.
            lease.park(false);
            lease.unpark();
            lease.park(false);
            wait_for(&arena, parked);
            lease.unpark();
            // Parked with its pages dropped: it reads zero when it runs again.
            lease.park(true);
            wait_for(&arena, parked);
            lease.unpark();
            // SAFETY: unparked again.
            assert_eq!(unsafe { *((range.end - 8) as *const u64) }, 0);
            // SAFETY: accessible, owned.
            unsafe { *((range.end - 8) as *mut u64) = 0xbeef };
            drop(stack);
            assert_eq!(arena.stats().stacks, 0);
            // The same slot comes back, zeroed, and unleased: parking it is not asked.
            let again = arena.new_stack(64 << 10, true).expect("a stack");
            assert_eq!(again.range(), range);
            // SAFETY: accessible, owned.
            assert_eq!(unsafe { *((range.end - 8) as *const u64) }, 0);
            let accessible = if kind == Guards::Protection { 2 } else { 0 };
            assert_eq!(arena.stats().mappings(), 1 + accessible);
            // A lease whose stack was given back does nothing.
            lease.unpark();
            lease.park(true);
            arena.sweeper().tick();
            arena.sweeper().tick();
            assert_eq!(arena.stats().unparked, 1);
        }
    }

    /// `n` stacks of 16 KiB from `arena`, each bound to a lease of its own.
    fn leased_stacks(
        arena: &StackArena,
        n: usize,
    ) -> (Vec<StackLease>, Vec<Box<dyn wasmtime::StackMemory>>) {
        let leases: Vec<StackLease> = (0..n).map(|_| StackLease::default()).collect();
        let stacks = leases
            .iter()
            .map(|lease| {
                let previous = LEASING.with(|l| l.replace(Some(lease.clone())));
                let stack = arena.new_stack(16 << 10, true).expect("a stack");
                LEASING.with(|l| *l.borrow_mut() = previous);
                stack
            })
            .collect();
        (leases, stacks)
    }

    #[test]
    fn idle_stacks_around_a_running_one_are_parked_and_it_is_left_alone() {
        for kind in kinds() {
            let arena = StackArena::with_guards(16 << 10, kind);
            let (leases, stacks) = leased_stacks(&arena, 5);
            // The middle one keeps running: the others are parked around it.
            for (i, lease) in leases.iter().enumerate() {
                if i != 2 {
                    lease.park(i % 2 == 0);
                }
            }
            wait_for(
                &arena,
                StackStats {
                    stacks: 5,
                    unparked: 1,
                    arenas: 1,
                    guard_markers: kind == Guards::Markers,
                },
            );
            let running = stacks[2].range();
            // SAFETY: the running stack is accessible.
            unsafe { *((running.end - 8) as *mut u64) = 7 };
            drop(stacks);
            // The running one, still accessible when freed, is kept warm.
            wait_for(
                &arena,
                StackStats {
                    stacks: 0,
                    unparked: 1,
                    arenas: 1,
                    guard_markers: kind == Guards::Markers,
                },
            );
        }
    }

    /// The mappings of this process that lie within `range`.
    fn mappings_within(range: &Range<usize>) -> usize {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("Linux");
        maps.lines()
            .filter_map(|l| {
                let (start, rest) = l.split_once('-')?;
                let end = rest.split_whitespace().next()?;
                let start = usize::from_str_radix(start, 16).ok()?;
                let end = usize::from_str_radix(end, 16).ok()?;
                Some(start..end)
            })
            .filter(|m| m.start < range.end && m.end > range.start)
            .count()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stacks_used_at_once_and_parked_merge_into_one_mapping() {
        for kind in kinds() {
            let arena = StackArena::with_guards(16 << 10, kind);
            let (leases, stacks) = leased_stacks(&arena, 10);
            // Every stack touched while all are accessible, as a burst of spawns does.
            for stack in &stacks {
                // SAFETY: accessible, owned by this test.
                unsafe { *((stack.range().end - 8) as *mut u64) = 1 };
            }
            let arena_range = stacks[0].guard_range().start as usize..stacks[9].range().end;
            // With protection each accessible slot splits the arena; with markers the
            // arena is one mapping whatever its slots do.
            match kind {
                Guards::Protection => assert!(mappings_within(&arena_range) > 10),
                Guards::Markers => assert_eq!(mappings_within(&arena_range), 1),
            }
            for lease in &leases {
                lease.park(false);
            }
            wait_for(
                &arena,
                StackStats {
                    stacks: 10,
                    unparked: 0,
                    arenas: 1,
                    guard_markers: kind == Guards::Markers,
                },
            );
            assert_eq!(mappings_within(&arena_range), 1, "parked slots merge");
            drop(stacks);
        }
    }

    #[test]
    fn two_ticks_release_what_the_queue_held_and_the_arena_goes() {
        for kind in kinds() {
            let arena = StackArena::with_guards(16 << 10, kind);
            let weak = Arc::downgrade(&arena.inner);
            let sweeper = arena.sweeper();
            let (leases, stacks) = leased_stacks(&arena, 2);
            // Queued, then given back before any tick: the queue still holds them.
            for lease in &leases {
                lease.park(false);
            }
            drop((leases, stacks, arena));
            assert!(weak.upgrade().is_some(), "the queued slots hold the arena");
            sweeper.tick();
            sweeper.tick();
            assert!(
                weak.upgrade().is_none(),
                "drained: the arena and its mappings are gone"
            );
        }
    }

    #[test]
    fn once_the_sweeper_finished_stacks_are_given_back_at_once_and_the_arena_goes() {
        for kind in kinds() {
            let arena = StackArena::with_guards(16 << 10, kind);
            let weak = Arc::downgrade(&arena.inner);
            let sweeper = arena.sweeper();
            let (leases, stacks) = leased_stacks(&arena, MAX_WARM + 3);
            // One rested before the end: queued, then parked by `finish`.
            leases[0].park(true);
            sweeper.finish();
            assert_eq!(arena.stats().unparked, MAX_WARM + 2);
            // Freed after it (beyond the warm ones): parked at once, not queued for ticks
            // that will never come.
            drop(stacks);
            assert_eq!(arena.stats().unparked, MAX_WARM);
            drop((leases, arena));
            assert!(
                weak.upgrade().is_none(),
                "nothing queued holds the arena: its mappings are gone"
            );
        }
    }

    #[test]
    fn a_freed_stack_is_kept_warm_for_the_next_up_to_a_bound() {
        for kind in kinds() {
            let arena = StackArena::with_guards(16 << 10, kind);
            let (_leases, stacks) = leased_stacks(&arena, MAX_WARM + 2);
            // Freed in order: the first MAX_WARM are kept warm, the last of them reused first.
            let last_warm = stacks[MAX_WARM - 1].range();
            // SAFETY: accessible (just handed out), owned by this test.
            unsafe { *((last_warm.end - 8) as *mut u64) = 0xfeed };
            for stack in stacks {
                drop(stack);
            }
            // The bound's worth stay accessible; the two beyond wait for the sweeper, which
            // drops their pages and parks them.
            assert_eq!(arena.stats().unparked, MAX_WARM + 2);
            let warm = StackStats {
                stacks: 0,
                unparked: MAX_WARM,
                arenas: 1,
                guard_markers: kind == Guards::Markers,
            };
            wait_for(&arena, warm);
            // The next stack is the last freed, as it was: no protection change, no fault.
            let again = arena.new_stack(16 << 10, false).expect("a stack");
            assert_eq!(again.range(), last_warm);
            // SAFETY: accessible, owned.
            assert_eq!(unsafe { *((last_warm.end - 8) as *const u64) }, 0xfeed);
            assert_eq!(arena.stats().unparked, MAX_WARM);
            // Asked for a zeroed stack, a warm one is zeroed first.
            drop(again);
            let zeroed = arena.new_stack(16 << 10, true).expect("a stack");
            assert_eq!(zeroed.range(), last_warm);
            // SAFETY: accessible, owned.
            assert_eq!(unsafe { *((last_warm.end - 8) as *const u64) }, 0);
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn stacks_freed_beyond_the_warm_ones_are_given_back_together_and_reused_zeroed() {
        for kind in kinds() {
            let arena = StackArena::with_guards(16 << 10, kind);
            let (leases, stacks) = leased_stacks(&arena, MAX_WARM + 6);
            for stack in &stacks {
                // SAFETY: accessible, owned by this test.
                unsafe { *((stack.range().end - 8) as *mut u64) = 0xdead };
            }
            let beyond: Vec<Range<usize>> = stacks[MAX_WARM..].iter().map(|s| s.range()).collect();
            let span = beyond[0].start..beyond[5].end;
            // Some idle (queued already), some running, as a scale-down's mix.
            for lease in &leases[MAX_WARM..MAX_WARM + 3] {
                lease.park(true);
            }
            drop(stacks);
            // Nothing given back yet beyond the warm ones: they wait for the sweeper.
            assert_eq!(arena.stats().unparked, MAX_WARM + 6);
            wait_for(
                &arena,
                StackStats {
                    stacks: 0,
                    unparked: MAX_WARM,
                    arenas: 1,
                    guard_markers: kind == Guards::Markers,
                },
            );
            // Parked: the six slots and their guards are one mapping with the rest of the
            // arena's inaccessible part.
            assert_eq!(mappings_within(&span), 1);
            // The warm ones come first, then the given-back ones, zeroed.
            let (_more_leases, again) = leased_stacks(&arena, MAX_WARM + 6);
            let reused: Vec<Range<usize>> = again[MAX_WARM..].iter().map(|s| s.range()).collect();
            for range in &reused {
                assert!(beyond.contains(range), "a given-back slot is reused");
                // SAFETY: accessible (just handed out), owned by this test.
                assert_eq!(unsafe { *((range.end - 8) as *const u64) }, 0);
            }
            // A lease whose stack went back through the sweeper does nothing.
            leases[MAX_WARM].unpark();
            leases[MAX_WARM].park(true);
            assert_eq!(
                arena.stats().unparked,
                MAX_WARM + 6,
                "only the stacks handed out"
            );
        }
    }

    #[test]
    fn a_stack_freed_while_parked_reads_zero_when_handed_out_again_whether_it_kept_its_pages() {
        for kind in kinds() {
            for keep_pages in [true, false] {
                let arena = StackArena::with_guards(16 << 10, kind);
                let (leases, stacks) = leased_stacks(&arena, 1);
                let range = stacks[0].range();
                // SAFETY: accessible (just handed out), owned by this test.
                unsafe { *((range.end - 8) as *mut u64) = 0xfeed };
                leases[0].park(!keep_pages);
                wait_for(
                    &arena,
                    StackStats {
                        stacks: 1,
                        unparked: 0,
                        arenas: 1,
                        guard_markers: kind == Guards::Markers,
                    },
                );
                drop(stacks);
                let (_leases, again) = leased_stacks(&arena, 1);
                assert_eq!(again[0].range(), range);
                // SAFETY: accessible (just handed out), owned by this test.
                assert_eq!(
                    unsafe { *((range.end - 8) as *const u64) },
                    0,
                    "{keep_pages}"
                );
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn every_guard_page_stays_inaccessible_whatever_its_slot_does() {
        for kind in kinds() {
            let arena = StackArena::with_guards(16 << 10, kind);
            let (leases, stacks) = leased_stacks(&arena, MAX_WARM + 4);
            let guards: Vec<usize> = stacks
                .iter()
                .map(|s| s.guard_range().start as usize)
                .collect();
            let check = |when: &str| {
                for &guard in &guards {
                    assert_eq!(
                        super::super::pages::readable(guard),
                        Some(false),
                        "{kind:?}, {when}"
                    );
                }
            };
            let top = stacks[0].range().end - 8;
            assert_eq!(
                super::super::pages::readable(top),
                Some(true),
                "{kind:?}: a stack in use"
            );
            check("in use");
            // Parked, half with their pages dropped (a discard next to each guard).
            for (i, lease) in leases.iter().enumerate() {
                lease.park(i % 2 == 0);
            }
            arena.sweeper().tick();
            arena.sweeper().tick();
            check("parked");
            // Freed (the warm ones kept, the rest given back through the sweeper), then
            // handed out again.
            drop(stacks);
            arena.sweeper().tick();
            arena.sweeper().tick();
            check("freed");
            let (_leases, again) = leased_stacks(&arena, MAX_WARM + 4);
            check("reused");
            drop(again);
        }
    }

    #[test]
    fn a_stack_larger_than_the_arenas_is_refused() {
        for kind in kinds() {
            let arena = StackArena::with_guards(64 << 10, kind);
            assert!(arena.new_stack(128 << 10, true).is_err());
            assert_eq!(arena.stats().stacks, 0);
        }
    }
}
