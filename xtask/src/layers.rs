//! Checks that egressd's modules import the way ARCHITECTURE.md draws them:
//! each layer imports only from layers below it, and no modules import
//! each other in a cycle. The layers are read from ARCHITECTURE.md's
//! numbered list (`1. `cli/`: ...`), so the document and the code cannot
//! drift apart unnoticed.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};

/// A module two levels deep at most (`dns::proxy`), named from `src`.
type Module = String;

/// The layers named in `doc`, top first.
pub fn layers(doc: &str) -> Vec<String> {
    doc.lines()
        .filter_map(|l| {
            let (n, rest) = l.split_once(". `")?;
            n.trim().parse::<u32>().ok()?;
            Some(rest.split_once("/`")?.0.to_string())
        })
        .collect()
}

/// The module a file under `src` is part of (at most two levels deep).
fn module_of(rel: &Path) -> Module {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts.truncate(2);
    parts.join("::")
}

/// Whether `module` (`a` or `a::b`) is a file or directory under `src`.
fn exists(src: &Path, module: &str) -> bool {
    let path: PathBuf = module.split("::").collect();
    src.join(&path).with_extension("rs").is_file() || src.join(&path).join("mod.rs").is_file()
}

/// The code of a file without comments and without its `#[cfg(test)]` tail.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths of a use tree at `s` (after `crate::`), two segments at most.
fn paths(s: &str) -> Vec<Vec<String>> {
    fn tree(s: &str, i: &mut usize, prefix: &[String], out: &mut Vec<Vec<String>>) {
        let b = s.as_bytes();
        let skip = |i: &mut usize| {
            while *i < b.len() && b[*i].is_ascii_whitespace() {
                *i += 1;
            }
        };
        skip(i);
        if b.get(*i) == Some(&b'{') {
            *i += 1;
            loop {
                skip(i);
                match b.get(*i) {
                    None => return,
                    Some(b'}') => {
                        *i += 1;
                        return;
                    }
                    Some(b',') => *i += 1,
                    _ => tree(s, i, prefix, out),
                }
            }
        }
        let start = *i;
        while *i < b.len() && (b[*i].is_ascii_alphanumeric() || b[*i] == b'_') {
            *i += 1;
        }
        let word = &s[start..*i];
        if word.is_empty() {
            *i += 1;
            return;
        }
        let mut path = prefix.to_vec();
        if word != "self" {
            path.push(word.to_string());
        }
        if s[*i..].starts_with("::") {
            *i += 2;
            tree(s, i, &path, out);
        } else {
            if !path.is_empty() {
                out.push(path);
            }
            // `x as y`: the alias is no path.
            let rest = &s[*i..];
            let trimmed = rest.trim_start();
            if let Some(alias) = trimmed.strip_prefix("as") {
                if alias.starts_with(char::is_whitespace) {
                    let alias = alias.trim_start();
                    let len = alias
                        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                        .unwrap_or(alias.len());
                    *i = s.len() - alias.len() + len;
                }
            }
        }
    }
    let mut out = Vec::new();
    tree(s, &mut 0, &[], &mut out);
    out
}

/// The child modules a file declares (`mod x;`, `pub mod x;`,
/// `pub(crate) mod x;`): not inline ones (`mod x { .. }`).
fn declared_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            let l = l
                .strip_prefix("pub(crate) ")
                .or_else(|| l.strip_prefix("pub "))
                .unwrap_or(l);
            let name = l.strip_prefix("mod ")?.strip_suffix(';')?;
            name.chars()
                .all(|c| c.is_alphanumeric() || c == '_')
                .then(|| name.to_string())
        })
        .collect()
}

/// Module -> the modules it imports, for every file under `src`.
fn imports(src: &Path) -> Result<BTreeMap<Module, BTreeSet<Module>>> {
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let rel = path.strip_prefix(src)?;
            if path.extension().is_none_or(|e| e != "rs") || rel.parent() == Some(Path::new("")) {
                continue; // lib.rs and main.rs sit above every layer
            }
            let me = module_of(rel);
            let text = code(&std::fs::read_to_string(&path)?);
            // This file's module path; `super` is the module that declares it.
            let mut own: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if own.last().is_some_and(|p| p == "mod") {
                own.pop();
            }
            let parent = own[..own.len() - 1].join("::");
            let own = own.join("::");
            // Paths relative to this module: `self::`, and a child module
            // it declares (`mod lsm;` then `lsm::Thing`).
            let mut prefixes = vec![
                ("crate::".to_string(), String::new()),
                ("super::".to_string(), parent),
                ("self::".to_string(), own.clone()),
            ];
            for child in declared_modules(&text) {
                prefixes.push((format!("{child}::"), format!("{own}::{child}")));
            }
            let mut found = Vec::new();
            for (prefix, base) in &prefixes {
                for (at, _) in text.match_indices(prefix.as_str()) {
                    let before = text[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                        continue;
                    }
                    let mut p = paths(&text[at + prefix.len()..]);
                    if p.is_empty() && prefix != "crate::" {
                        // `lsm::{self}` or a bare `lsm::f(..)` call.
                        p.push(Vec::new());
                    }
                    for p in p {
                        let mut full: Vec<String> = base
                            .split("::")
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect();
                        full.extend(p);
                        found.push(full);
                    }
                }
            }
            let deps = graph.entry(me.clone()).or_default();
            for full in found {
                let two = full.iter().take(2).cloned().collect::<Vec<_>>().join("::");
                let one = full.first().cloned().unwrap_or_default();
                let target = if exists(src, &two) { two } else { one };
                if !target.is_empty() && exists(src, &target) && target != me {
                    deps.insert(target);
                }
            }
        }
    }
    Ok(graph)
}

/// The layer of `module`: its first segment.
fn layer(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Every way the graph breaks the rules: an import of a higher layer, an
/// unlisted layer, a cycle.
pub fn problems(graph: &BTreeMap<Module, BTreeSet<Module>>, order: &[String]) -> Vec<String> {
    let rank = |m: &str| order.iter().position(|l| l == layer(m));
    let mut out = Vec::new();
    for (from, deps) in graph {
        let Some(mine) = rank(from) else {
            out.push(format!(
                "{from}: its layer is not in ARCHITECTURE.md's list"
            ));
            continue;
        };
        for to in deps {
            match rank(to) {
                Some(theirs) if theirs < mine => out.push(format!(
                    "{from} imports {to}: `{}` is above `{}`",
                    layer(to),
                    layer(from)
                )),
                _ => {}
            }
        }
    }
    // A cycle: a module that can reach itself.
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&Module> = graph[start].iter().collect();
        while let Some(m) = todo.pop() {
            if m == start {
                out.push(format!("{start} imports itself through others (a cycle)"));
                break;
            }
            if seen.insert(m) {
                todo.extend(graph.get(m).into_iter().flatten());
            }
        }
    }
    out
}

/// Checks the userspace crate against ARCHITECTURE.md.
pub fn check(root: &Path) -> Result<()> {
    let doc =
        std::fs::read_to_string(root.join("ARCHITECTURE.md")).context("reading ARCHITECTURE.md")?;
    let order = layers(&doc);
    if order.is_empty() {
        bail!("ARCHITECTURE.md lists no layers (a numbered list of `name/` items)");
    }
    let graph = imports(&root.join("egress-userspace/src"))?;
    let found = problems(&graph, &order);
    if !found.is_empty() {
        bail!(
            "the modules do not import as ARCHITECTURE.md says:\n  {}",
            found.join("\n  ")
        );
    }
    println!(
        "layers: {} modules in {} layers, imports point down, no cycles",
        graph.len(),
        order.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn use_trees_are_read_two_segments_deep() {
        let p = paths("{a::{b::C, d as D}, e::f::G, self}; rest");
        let p: Vec<String> = p.iter().map(|p| p.join("::")).collect();
        assert_eq!(p, ["a::b::C", "a::d", "e::f::G"]);
        assert_eq!(paths("x::y(1)")[0], ["x", "y"]);
    }

    #[test]
    fn an_upward_import_and_a_cycle_are_found() {
        let order: Vec<String> = ["cli", "state", "policy"].map(String::from).to_vec();
        let edges = |e: &[(&str, &str)]| {
            let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
            for (a, b) in e {
                g.entry(a.to_string()).or_default().insert(b.to_string());
                g.entry(b.to_string()).or_default();
            }
            g
        };
        assert!(problems(
            &edges(&[("cli::run", "state::a"), ("state::a", "policy")]),
            &order
        )
        .is_empty());
        let up = problems(&edges(&[("policy", "state::a")]), &order);
        assert_eq!(up, ["policy imports state::a: `state` is above `policy`"]);
        let cycle = problems(
            &edges(&[("state::a", "state::b"), ("state::b", "state::a")]),
            &order,
        );
        assert_eq!(cycle.len(), 2, "{cycle:?}");
        assert_eq!(problems(&edges(&[("web", "cli")]), &order).len(), 1);
    }

    /// A parent that uses its child by a relative path (`lsm::f`), while
    /// the child uses the parent (`super::X`), is a cycle.
    #[test]
    fn a_cycle_through_relative_paths_is_found() {
        let src = std::env::temp_dir().join(format!("egressd-layers-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&src);
        std::fs::create_dir_all(src.join("kernel")).unwrap();
        std::fs::write(src.join("lib.rs"), "pub mod kernel;\n").unwrap();
        std::fs::write(
            src.join("kernel/mod.rs"),
            "pub mod lsm;\npub struct Loaded;\npub fn go() { lsm::attach(); }\n",
        )
        .unwrap();
        std::fs::write(
            src.join("kernel/lsm.rs"),
            "use super::Loaded;\npub fn attach() {}\n",
        )
        .unwrap();
        let graph = imports(&src).unwrap();
        assert!(graph["kernel"].contains("kernel::lsm"), "{graph:?}");
        assert!(graph["kernel::lsm"].contains("kernel"), "{graph:?}");
        let order = vec!["kernel".to_string()];
        let found = problems(&graph, &order);
        assert!(found.iter().any(|p| p.contains("a cycle")), "{found:?}");
        // Without the parent's use of its child: no cycle.
        std::fs::write(
            src.join("kernel/mod.rs"),
            "pub mod lsm;\npub struct Loaded;\n",
        )
        .unwrap();
        assert!(problems(&imports(&src).unwrap(), &order).is_empty());
        std::fs::remove_dir_all(&src).unwrap();
    }

    #[test]
    fn layers_are_read_from_the_numbered_list() {
        let doc = "# Map\n\n1. `cli/`: commands\n2. `state/`: the allowlist\nnot 3. `x/`\n";
        assert_eq!(layers(doc), ["cli", "state"]);
    }
}
