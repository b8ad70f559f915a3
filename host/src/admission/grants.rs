//! Admission of directory grants:
//!
//! - Each grant is opened once, here, without following a symbolic link
//!   ([`crate::opened_dir`]); instances get that handle, never the path again.
//! - A grant pinned to a directory identity (by the daemon, from what it recorded at
//!   apply) is refused when its path now names another directory.
//! - Two grants where one lies strictly inside the other and either is writable are
//!   refused, within one workload and across workloads: a guest could otherwise reshape
//!   the inner grant's path (plant links, swap it) under the host. The same directory
//!   granted twice is allowed (a shared directory): no grant's path runs through the
//!   other's contents.

use std::sync::Arc;

use crate::manifest::{DirGrant, Origin, Workload};
use crate::opened_dir::OpenedDir;
use crate::runtime::{GrantedDir, Grants};
use crate::{Diagnostic, Rejected};

/// Opens every directory `w` grants; all of them, or every problem located.
pub(crate) fn open_grants(w: &Workload) -> Result<Grants, Vec<Diagnostic>> {
    let mut opened = Vec::with_capacity(w.spec.dirs.len());
    let mut problems = Vec::new();
    for grant in &w.spec.dirs {
        let origin = w
            .dir_origins
            .get(&grant.guest)
            .or(w.origin.as_ref())
            .cloned();
        match OpenedDir::open(&grant.host) {
            Ok(dir) => match grant.pinned {
                Some(pinned) if !pinned.same_as(&dir.identity()) => problems.push(
                    Diagnostic::at(
                        origin,
                        format!(
                            "`{}` is no longer the directory granted to `{}` at apply ({pinned}; now {}): it was replaced, so it is not granted",
                            grant.host.display(),
                            w.name,
                            dir.identity()
                        ),
                    )
                    .with_help("if the new directory is meant, apply the manifest again"),
                ),
                _ => opened.push(GrantedDir {
                    guest: grant.guest.clone(),
                    read_only: grant.read_only,
                    dir,
                }),
            },
            Err(e) => problems.push(Diagnostic::at(
                origin,
                format!("workload `{}`: directory grant refused: {e}", w.name),
            )),
        }
    }
    if problems.is_empty() {
        Ok(Arc::from(opened))
    } else {
        Err(problems)
    }
}

/// One grant to compare: whose it is, the grant, and where it was written.
pub(crate) struct GrantRef<'a> {
    /// The workload granted it.
    pub workload: &'a str,
    /// The grant.
    pub grant: &'a DirGrant,
    /// Where it was written, if known.
    pub origin: Option<&'a Origin>,
}

/// The grants of `workloads`, each with where it was written.
pub(crate) fn grant_refs(workloads: &[Workload]) -> Vec<GrantRef<'_>> {
    workloads
        .iter()
        .flat_map(|w| {
            w.spec.dirs.iter().map(move |grant| GrantRef {
                workload: &w.name,
                grant,
                origin: w.dir_origins.get(&grant.guest).or(w.origin.as_ref()),
            })
        })
        .collect()
}

/// Grants of `new` that nest with another of `new` or of `existing` (what stays applied
/// beside them) where either of the two is writable: the rejection, if any.
pub(crate) fn check_nesting(
    new: &[GrantRef<'_>],
    existing: &[GrantRef<'_>],
) -> Result<(), Rejected> {
    let mut diagnostics = Vec::new();
    for (i, a) in new.iter().enumerate() {
        if let Some(b) = new[..i]
            .iter()
            .chain(existing)
            .find(|b| conflicting(a.grant, b.grant))
        {
            diagnostics.push(nested_diagnostic(a, b));
        }
    }
    if diagnostics.is_empty() {
        Ok(())
    } else {
        Err(Rejected { diagnostics })
    }
}

fn conflicting(a: &DirGrant, b: &DirGrant) -> bool {
    (!a.read_only || !b.read_only) && crate::opened_dir::nested(&a.host, &b.host)
}

fn nested_diagnostic(a: &GrantRef<'_>, b: &GrantRef<'_>) -> Diagnostic {
    let whose = |g: &GrantRef<'_>| {
        format!(
            "`{}` ({}, granted to `{}` at {})",
            g.grant.host.display(),
            if g.grant.read_only {
                "read-only"
            } else {
                "writable"
            },
            g.workload,
            g.grant.guest
        )
    };
    let relation = if a.grant.host.starts_with(&b.grant.host) {
        "lies inside"
    } else {
        "contains"
    };
    Diagnostic::at(
        a.origin.cloned(),
        format!("{} {relation} {}", whose(a), whose(b)),
    )
    .with_help(
        "a writable grant may not overlap another grant (a guest could plant links or swap directories under it); grant disjoint directories, or make both read-only",
    )
}
