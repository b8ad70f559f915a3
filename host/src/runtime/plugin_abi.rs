//! A policy plugin's slot list, written by the host straight into the plugin's memory in
//! the component model's canonical ABI layout.
//!
//! wasmtime lowers a `list<slot>` field by field, looking its memory up again for every
//! field: at 100,000 slots that was 40% of a plugin call. [`Slots`] instead writes each
//! slot straight into the guest's memory, laid out as the canonical ABI lays out
//! `list<slot>` (little endian, each field at its aligned offset), after one `realloc` in
//! the guest. It type-checks as the WIT `list<slot>` that bindgen's [`t::Slot`]
//! describes, so a plugin built for another shape is refused at link, never misread; the
//! offsets below are checked against wasmtime's own layout rules by the tests.
//!
//! The layout (offsets in bytes; `slot` is 112 bytes, aligned to 8):
//!
//! | at | field | at | field |
//! | --- | --- | --- | --- |
//! | 0 | `index: u32` | 72 | `restarts: u32` |
//! | 8 | `instance: option<instance>` | 76 | `consecutive-ends: u32` |
//! | 40 | `successor: option<instance>` | 80 | `last-end: option<end>` |
//!
//! An `option<T>` is a one-byte discriminant, then `T` at its alignment; `instance` is
//! `current: bool` at 0, `age-ms: u64` at 8, `ready` at 16, `stopping` at 17 (24 bytes);
//! `end` is `reason` at 0, `exit-code: option<s32>` at 4, `success`, `host-stop`,
//! `deterministic` at 12, 13, 14, `ago-ms: u64` at 16 (24 bytes).

use std::mem::MaybeUninit;

use wasmtime::ValRaw;
use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LowerContext,
};
use wasmtime::component::{ComponentType, Lower};

use super::plugin::t;

/// Bytes of one `slot`.
pub const SLOT_SIZE: usize = 112;
/// Alignment of a `slot` (its `u64` fields).
const SLOT_ALIGN: u32 = 8;

const INDEX: usize = 0;
const INSTANCE: usize = 8;
const SUCCESSOR: usize = 40;
const RESTARTS: usize = 72;
const CONSECUTIVE_ENDS: usize = 76;
const LAST_END: usize = 80;
/// Where an option's payload starts, after its discriminant, for 8-aligned payloads.
const PAYLOAD: usize = 8;

/// A `list<slot>` written straight into the guest's memory: `count` slots, slot `i` being
/// `slot(i)`. Nothing is buffered on the host.
pub struct Slots<'a> {
    /// How many slots.
    pub count: usize,
    /// Slot `i`.
    pub slot: &'a (dyn Fn(usize) -> t::Slot + Send + Sync),
}

impl Slots<'_> {
    /// Allocates the list in the guest's memory and writes it there: its (pointer,
    /// length).
    fn store<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<(u32, u32)> {
        let size = self
            .count
            .checked_mul(SLOT_SIZE)
            .ok_or_else(|| wasmtime::format_err!("size overflow copying a list"))?;
        let ptr = cx.realloc(0, 0, SLOT_ALIGN, size)?;
        let Some(to) = cx
            .as_slice_mut()
            .get_mut(ptr..)
            .and_then(|m| m.get_mut(..size))
        else {
            wasmtime::bail!("realloc return: beyond end of memory");
        };
        for (i, out) in to.chunks_exact_mut(SLOT_SIZE).enumerate() {
            write_slot(out, &(self.slot)(i));
        }
        Ok((u32::try_from(ptr)?, u32::try_from(self.count)?))
    }
}

/// Writes `slot` into `out` (at least [`SLOT_SIZE`] bytes), every field and discriminant;
/// padding and absent payloads are left as they were.
fn write_slot(out: &mut [u8], slot: &t::Slot) {
    put(out, INDEX, &slot.index.to_le_bytes());
    instance(out, INSTANCE, slot.instance.as_ref());
    instance(out, SUCCESSOR, slot.successor.as_ref());
    put(out, RESTARTS, &slot.restarts.to_le_bytes());
    put(out, CONSECUTIVE_ENDS, &slot.consecutive_ends.to_le_bytes());
    out[LAST_END] = u8::from(slot.last_end.is_some());
    if let Some(end) = &slot.last_end {
        let at = LAST_END + PAYLOAD;
        // bindgen's enums are `repr(u8)` in the WIT's case order.
        out[at] = end.reason as u8;
        out[at + 4] = u8::from(end.exit_code.is_some());
        if let Some(code) = end.exit_code {
            put(out, at + 8, &code.to_le_bytes());
        }
        out[at + 12] = u8::from(end.success);
        out[at + 13] = u8::from(end.host_stop);
        out[at + 14] = u8::from(end.deterministic);
        put(out, at + 16, &end.ago_ms.to_le_bytes());
    }
}

fn put(out: &mut [u8], at: usize, bytes: &[u8]) {
    out[at..at + bytes.len()].copy_from_slice(bytes);
}

fn instance(out: &mut [u8], at: usize, instance: Option<&t::Instance>) {
    out[at] = u8::from(instance.is_some());
    let Some(i) = instance else { return };
    let payload = at + PAYLOAD;
    out[payload] = u8::from(i.current);
    put(out, payload + 8, &i.age_ms.to_le_bytes());
    out[payload + 16] = u8::from(i.ready);
    out[payload + 17] = u8::from(i.stopping);
}

// SAFETY: `Lower` is a list's pointer and length, as for `Vec<T>`, and the type check is
// the bindgen type's own, so the bytes are only ever given to a `list<slot>` of the shape
// this module lays out.
unsafe impl ComponentType for Slots<'_> {
    type Lower = [ValRaw; 2];
    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<t::Slot> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: both lowerings write exactly the pointer pair `Lower` declares.
unsafe impl Lower for Slots<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 2]>,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.store(cx)?;
        // Pointers travel as 64-bit values in flat lowerings, as wasmtime's own do.
        dst.write([ValRaw::i64(i64::from(ptr)), ValRaw::i64(i64::from(len))]);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.store(cx)?;
        *cx.get::<4>(offset) = ptr.to_le_bytes();
        *cx.get::<4>(offset + 4) = len.to_le_bytes();
        Ok(())
    }
}

/// The `desired` record, its text borrowed from the host's own (nothing is copied until
/// it reaches the guest).
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct Desired<'a> {
    /// The workload's name.
    pub workload: &'a str,
    /// The applied revision.
    pub revision: &'a str,
    /// `spec.replicas`.
    pub replicas: u32,
    /// What to do when an instance ends on its own.
    #[component(name = "restart-policy")]
    pub restart_policy: t::RestartPolicy,
    /// Back-off in milliseconds.
    pub backoff: t::Backoff,
    /// The restart budget, if any.
    #[component(name = "restart-budget")]
    pub restart_budget: Option<t::RestartBudget>,
    /// `spec.policy.config` as JSON text.
    pub config: &'a str,
    /// The update strategy, resolved to counts.
    pub strategy: t::Strategy,
}

/// The `observed` record with its slots already encoded: what a call is given.
#[derive(ComponentType, Lower)]
#[component(record)]
pub struct Observed<'a> {
    /// Index = slot number.
    pub slots: Slots<'a>,
    /// How long ago recent replacements happened.
    #[component(name = "recent-restarts-ago-ms")]
    pub recent_restarts_ago_ms: &'a [u64],
    /// Whether the workload is already marked failed.
    pub failed: bool,
    /// The rollout in progress.
    pub rollout: Option<t::Rollout>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Offsets of consecutive fields, by wasmtime's layout rules.
    fn offsets(fields: &[CanonicalAbiInfo]) -> Vec<usize> {
        let mut at = 0usize;
        fields
            .iter()
            .map(|f| f.next_field32_size(&mut at))
            .collect()
    }

    fn abi<T: ComponentType>() -> CanonicalAbiInfo {
        T::ABI
    }

    #[test]
    fn the_layout_is_the_canonical_abis() {
        assert_eq!(abi::<t::Slot>().size32 as usize, SLOT_SIZE);
        assert_eq!(abi::<t::Slot>().align32, SLOT_ALIGN);
        assert_eq!(
            offsets(&[
                abi::<u32>(),
                abi::<Option<t::Instance>>(),
                abi::<Option<t::Instance>>(),
                abi::<u32>(),
                abi::<u32>(),
                abi::<Option<t::End>>(),
            ]),
            [
                INDEX,
                INSTANCE,
                SUCCESSOR,
                RESTARTS,
                CONSECUTIVE_ENDS,
                LAST_END
            ]
        );
        assert_eq!(
            offsets(&[abi::<bool>(), abi::<u64>(), abi::<bool>(), abi::<bool>()]),
            [0, 8, 16, 17]
        );
        assert_eq!(abi::<t::Instance>().size32, 24);
        assert_eq!(
            offsets(&[
                abi::<t::EndReason>(),
                abi::<Option<i32>>(),
                abi::<bool>(),
                abi::<bool>(),
                abi::<bool>(),
                abi::<u64>(),
            ]),
            [0, 4, 12, 13, 14, 16]
        );
        assert_eq!(abi::<t::End>().size32, 24);
        assert_eq!(t::EndReason::Exited as u8, 0);
        assert_eq!(t::EndReason::Stopped as u8, 10);
        // An option's payload follows its one-byte discriminant at the payload's alignment.
        assert_eq!(abi::<Option<t::Instance>>().size32 as usize, PAYLOAD + 24);
        assert_eq!(abi::<Option<i32>>().size32, 8);
    }

    #[test]
    fn a_slot_is_written_field_by_field() {
        let mut b = [0xAAu8; SLOT_SIZE];
        write_slot(
            &mut b,
            &t::Slot {
                index: 7,
                instance: Some(t::Instance {
                    current: true,
                    age_ms: 0x0102_0304_0506_0708,
                    ready: false,
                    stopping: true,
                }),
                successor: None,
                restarts: 3,
                consecutive_ends: 2,
                last_end: Some(t::End {
                    reason: t::EndReason::Stopped,
                    exit_code: Some(-1),
                    success: false,
                    host_stop: true,
                    deterministic: false,
                    ago_ms: 9,
                }),
            },
        );
        assert_eq!(b[0..4], 7u32.to_le_bytes());
        assert_eq!((b[8], b[16]), (1, 1));
        assert_eq!(b[24..32], 0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!((b[32], b[33]), (0, 1));
        assert_eq!(b[40], 0, "no successor");
        assert_eq!(b[72..76], 3u32.to_le_bytes());
        assert_eq!(b[76..80], 2u32.to_le_bytes());
        assert_eq!((b[80], b[88], b[92]), (1, 10, 1));
        assert_eq!(b[96..100], (-1i32).to_le_bytes());
        assert_eq!((b[100], b[101], b[102]), (0, 1, 0));
        assert_eq!(b[104..112], 9u64.to_le_bytes());
    }
}
