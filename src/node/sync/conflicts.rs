//! Plugins of one store that eKuiper cannot tell apart: two of one type
//! whose names are equal without regard to case (`random` and `Random` both
//! need `plugins/sources/Random.so`), or function plugins claiming function
//! names equal without regard to case (eKuiper's function names ignore case).
//!
//! Stores written before the registry refused such pairs may hold them. A
//! node never chooses one: every plugin of such a pair fails, naming the
//! other, and the node keeps what it had of them, unchanged; so every node
//! reports the same, whatever order it reaches them in.

use std::collections::BTreeMap;

use futures_util::stream::{self, StreamExt};

use super::{Ctx, Listing, MetaRead, Outcome, METADATA_READS_PER_JOB};
use crate::node::manifest;
use crate::package::{uc_first, PluginType};
use crate::registry::PluginMeta;
use crate::store::Store;

/// A plugin left to sync, with its metadata when it was read already.
pub(super) type ToSync = (PluginType, String, Option<Result<MetaRead, String>>);

impl<S: Store> Ctx<'_, S> {
    /// Goes through the listing before anything is downloaded: plugins in
    /// conflict ([`by_name`], [`by_function`]) fail and are left as they
    /// are, plugins unchanged by their metadata's tag are reported, and the
    /// others are returned to be synced. Function plugins have their
    /// metadata read here (their function names are compared first).
    pub(super) async fn screen(&self, listed: Listing) -> Vec<ToSync> {
        let clashes = by_name(listed.keys());
        for ((ty, name), error) in &clashes {
            self.fail(*ty, name, error.clone());
            self.progress.inc();
        }

        // A plugin whose metadata has the tag it was installed from needs
        // no read; a function plugin is reported once its function names
        // are compared with the others'.
        let mut to_read = Vec::new();
        let mut unchanged_functions = Vec::new();
        for ((ty, name), etag) in listed {
            if clashes.contains_key(&(ty, name.clone())) {
                continue;
            }
            match self.unchanged_by_tag(ty, &name, etag.as_deref()) {
                Some(version) if ty != PluginType::Function => {
                    self.done(ty, &name, Outcome::Unchanged(version));
                    self.progress.inc();
                }
                Some(version) if self.recorded_functions(&name).is_some() => {
                    unchanged_functions.push((name, version));
                }
                _ => to_read.push((ty, name)),
            }
        }
        let (function_reads, others): (Vec<_>, Vec<_>) = to_read
            .into_iter()
            .partition(|(ty, _)| *ty == PluginType::Function);
        let reads = self.opts.jobs.max(1).saturating_mul(METADATA_READS_PER_JOB);
        let function_metas: Vec<(String, Result<MetaRead, String>)> = stream::iter(function_reads)
            .map(|(ty, name)| async move {
                let read = self.read_meta(ty, &name).await;
                (name, read)
            })
            .buffer_unordered(reads)
            .collect()
            .await;

        // What each function plugin will claim on this node: what its
        // metadata says, or what it claimed when it was installed if it
        // stays as it is (unchanged, unreadable, in a name conflict).
        let mut claims = Vec::new();
        for (name, _) in &unchanged_functions {
            claims.extend(self.recorded_functions(name).map(|f| (name.clone(), f)));
        }
        for (name, read) in &function_metas {
            let f = match read {
                Ok(MetaRead::Fetch(f)) => Some(claimed_functions(&f.meta)),
                Ok(MetaRead::Gone) => None,
                Ok(MetaRead::Done(_)) | Err(_) => self.recorded_functions(name),
            };
            claims.extend(f.map(|f| (name.clone(), f)));
        }
        for (ty, name) in clashes.keys() {
            if *ty == PluginType::Function {
                claims.extend(self.recorded_functions(name).map(|f| (name.clone(), f)));
            }
        }
        let function_clashes = by_function(&claims);

        let ty = PluginType::Function;
        for (name, version) in unchanged_functions {
            match function_clashes.get(&name) {
                Some(error) => self.fail(ty, &name, error.clone()),
                None => self.done(ty, &name, Outcome::Unchanged(version)),
            }
            self.progress.inc();
        }
        let mut out: Vec<ToSync> = Vec::new();
        for (name, read) in function_metas {
            match (&read, function_clashes.get(&name)) {
                (Ok(MetaRead::Done(_) | MetaRead::Fetch(_)), Some(error)) => {
                    self.fail(ty, &name, error.clone());
                    self.progress.inc();
                }
                _ => out.push((ty, name, Some(read))),
            }
        }
        out.extend(others.into_iter().map(|(ty, name)| (ty, name, None)));
        out
    }

    /// The function names function plugin `name` claimed when installed.
    fn recorded_functions(&self, name: &str) -> Option<Vec<String>> {
        let m = self.book.lock();
        m.plugins
            .get(&manifest::key(PluginType::Function, name))
            .and_then(|e| e.functions.clone())
    }
}

/// What the node keeps when a plugin is in conflict, for the messages.
const KEPT: &str =
    "neither is installed or updated on this node (what it had of them is left as it was)";

/// The function names a function plugin claims: its metadata's `functions`,
/// or its own name when it lists none (as the registry does).
pub(super) fn claimed_functions(meta: &PluginMeta) -> Vec<String> {
    meta.functions
        .clone()
        .filter(|f| !f.is_empty())
        .unwrap_or_else(|| vec![meta.name.clone()])
}

/// `a and b`, `a, b and c`.
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

/// The error of each plugin whose name equals another's of the same type
/// without regard to case, naming the others.
pub(super) fn by_name<'a>(
    plugins: impl IntoIterator<Item = &'a (PluginType, String)>,
) -> BTreeMap<(PluginType, String), String> {
    let mut groups: BTreeMap<(PluginType, String), Vec<String>> = BTreeMap::new();
    for (ty, name) in plugins {
        groups
            .entry((*ty, name.to_lowercase()))
            .or_default()
            .push(name.clone());
    }
    let mut out = BTreeMap::new();
    for ((ty, _), mut names) in groups {
        if names.len() < 2 {
            continue;
        }
        names.sort();
        let t = ty.as_str();
        let libraries: Vec<String> = names.iter().map(|n| uc_first(n)).collect();
        let need = if libraries.iter().all(|l| *l == libraries[0]) {
            format!(
                "eKuiper needs plugins/{t}/{}.so for {}",
                libraries[0],
                if names.len() == 2 { "both" } else { "all" }
            )
        } else {
            let files: Vec<String> = libraries
                .iter()
                .map(|l| format!("plugins/{t}/{l}.so"))
                .collect();
            format!(
                "their libraries {} differ only in case too",
                and_list(&files)
            )
        };
        for name in &names {
            let mut order = vec![name.clone()];
            order.extend(names.iter().filter(|n| *n != name).cloned());
            out.insert(
                (ty, name.clone()),
                format!(
                    "{} differ only in case; {need}; delete {} in the registry; {KEPT}",
                    and_list(&order),
                    if names.len() == 2 {
                        "one"
                    } else {
                        "all but one"
                    }
                ),
            );
        }
    }
    out
}

/// For one plugin: each other plugin it clashes with, and the pairs of
/// function names (its own, the other's).
type Clashes<'a> = BTreeMap<&'a str, Vec<(&'a str, &'a str)>>;

/// The error of each function plugin (by name) that claims a function
/// name another one claims too, without regard to case, naming the other
/// plugins and the functions. `claims` gives each plugin's function names.
pub(super) fn by_function(claims: &[(String, Vec<String>)]) -> BTreeMap<String, String> {
    let mut groups: BTreeMap<String, Vec<(&str, &str)>> = BTreeMap::new();
    for (plugin, functions) in claims {
        for f in functions {
            groups
                .entry(f.to_lowercase())
                .or_default()
                .push((plugin.as_str(), f.as_str()));
        }
    }
    let mut clashes: BTreeMap<&str, Clashes<'_>> = BTreeMap::new();
    for claimants in groups.values() {
        for &(p, f) in claimants {
            for &(q, g) in claimants {
                if p != q {
                    clashes
                        .entry(p)
                        .or_default()
                        .entry(q)
                        .or_default()
                        .push((f, g));
                }
            }
        }
    }
    clashes
        .into_iter()
        .map(|(p, others)| {
            let parts: Vec<String> = others
                .into_iter()
                .map(|(q, pairs)| {
                    let pairs: Vec<String> = pairs
                        .into_iter()
                        .map(|(f, g)| {
                            if f == g {
                                f.to_string()
                            } else {
                                format!("{f} and {g}")
                            }
                        })
                        .collect();
                    format!(
                        "function plugins {p} and {q} both claim the function {}",
                        pairs.join(", ")
                    )
                })
                .collect();
            (
                p.to_string(),
                format!(
                    "{}; eKuiper's function names ignore case; delete one in the registry or rename its function; {KEPT}",
                    parts.join("; ")
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_equal_without_case_name_each_other() {
        let listed = [
            (PluginType::Source, "random".to_string()),
            (PluginType::Source, "Random".to_string()),
            (PluginType::Sink, "random".to_string()),
            (PluginType::Sink, "print".to_string()),
        ];
        let c = by_name(&listed);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(
            c[&(PluginType::Source, "random".to_string())],
            format!("random and Random differ only in case; eKuiper needs plugins/sources/Random.so for both; delete one in the registry; {KEPT}")
        );
        assert!(c[&(PluginType::Source, "Random".to_string())]
            .starts_with("Random and random differ only in case;"));
    }

    #[test]
    fn functions_equal_without_case_name_each_other() {
        let claims = [
            (
                "echo".to_string(),
                vec!["echo".to_string(), "upper".to_string()],
            ),
            ("misc".to_string(), vec!["Upper".to_string()]),
            ("other".to_string(), vec!["lower".to_string()]),
        ];
        let c = by_function(&claims);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c["echo"].starts_with(
            "function plugins echo and misc both claim the function upper and Upper; eKuiper's function names ignore case"
        ), "{}", c["echo"]);
        assert!(
            c["misc"].starts_with(
                "function plugins misc and echo both claim the function Upper and upper;"
            ),
            "{}",
            c["misc"]
        );
    }
}
