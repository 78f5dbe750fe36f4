//! The modules' imports run one way: leaves at the bottom, then data and augmentation,
//! networks, methods, training, evaluation, the report and the command line on top. A
//! module may import only modules of lower layers (the leaves may use each other, without
//! cycles). Test code is left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A new module must be placed here.
const LAYERS: &[&[&str]] = &[
    &[
        "config",
        "losses",
        "schedule",
        "metrics",
        "tensor_io",
        "venv",
        "native",
        "dist",
        "precision",
        "faults",
        "launch",
        "rundir",
        "optim",
    ],
    &["augment", "plots"],
    &["data"],
    &["nets"],
    &["methods"],
    &["run"],
    &["train"],
    &["eval"],
    &["report"],
    &["cli"],
];

/// Imports that the layers would allow but that must not exist: what reads a run (the
/// evaluation, the report, the plots) does so through `run`, never through the training
/// loop, which does not draw either.
const FORBIDDEN: &[(&str, &str)] = &[
    ("eval", "train"),
    ("report", "train"),
    ("plots", "train"),
    ("train", "report"),
    ("train", "plots"),
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module {module} is in no layer of tests/layering.rs"))
}

/// The text without its `//` comments (doc comments too), where the `//` is not in a string.
fn without_comments(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut cut = line.len();
        for (i, _) in line.match_indices("//") {
            if line[..i].matches('"').count() % 2 == 0 {
                cut = i;
                break;
            }
        }
        out.push_str(&line[..cut]);
        out.push('\n');
    }
    out
}

/// The text without the items marked `#[cfg(test)]` (a `mod` or `fn` with its braces).
fn without_tests(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..i]);
        let item = &rest[i..];
        let end = match (item.find('{'), item.find(';')) {
            (Some(b), Some(s)) if s < b => s + 1,
            (Some(b), _) => {
                let mut depth = 0;
                let mut end = item.len();
                for (j, c) in item[b..].char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' => {
                            depth -= 1;
                            if depth == 0 {
                                end = b + j + 1;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                end
            }
            (None, Some(s)) => s + 1,
            (None, None) => item.len(),
        };
        rest = &item[end..];
    }
    out.push_str(rest);
    out
}

/// The top-level modules named after each `crate::` in `text` (`crate::a::b`, and every
/// item of `crate::{a, b::c}`).
fn crate_imports(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| -> String {
        s.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let after = &text[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // The group's items, split at top-level commas.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        found.insert(ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            found.insert(ident(&item));
        } else {
            found.insert(ident(after));
        }
    }
    found.retain(|m| !m.is_empty() && m != "self");
    found
}

/// Every source file of the library (`lib.rs` and `main.rs` left out): its path below
/// `src/` and its text without comments and test code.
fn source_files() -> Vec<(PathBuf, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&src).unwrap().to_path_buf();
            if rel == Path::new("lib.rs") || rel == Path::new("main.rs") {
                continue;
            }
            let text = without_tests(&without_comments(&std::fs::read_to_string(&path).unwrap()));
            files.push((rel, text));
        }
    }
    files
}

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in source_files() {
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(crate_imports(&text).into_iter().filter(|m| *m != module));
    }
    graph
}

#[test]
fn imports_run_from_higher_layers_to_lower_ones() {
    let graph = module_graph();
    assert!(
        graph.contains_key("cli") && graph.contains_key("config"),
        "{graph:?}"
    );
    let mut wrong = Vec::new();
    for (m, deps) in &graph {
        for d in deps {
            let (lm, ld) = (layer(m), layer(d));
            if ld > lm || (ld == lm && lm > 0) {
                wrong.push(format!("{m} (layer {lm}) imports {d} (layer {ld})"));
            }
        }
    }
    for (m, d) in FORBIDDEN {
        if graph.get(*m).is_some_and(|deps| deps.contains(*d)) {
            wrong.push(format!("{m} imports {d}, which it must not"));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layering:\n{}",
        wrong.join("\n")
    );
    // The leaves may use each other, but not in a cycle.
    let leaves: Vec<&String> = graph.keys().filter(|m| layer(m) == 0).collect();
    for &start in &leaves {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = graph[start].iter().collect();
        while let Some(m) = todo.pop() {
            assert!(
                m != start,
                "the leaves import each other in a cycle through {start}"
            );
            if seen.insert(m) {
                todo.extend(graph.get(m).into_iter().flatten());
            }
        }
    }
}

#[test]
fn the_import_reader_sees_groups_paths_and_skips_tests() {
    let text = "use crate::{config::{self, Config}, nets, methods::Method};\n\
                /// See crate::eval.\n\
                fn f() { crate::train::go(); } // not crate::cli\n\
                const URL: &str = \"a//b\"; fn g() { crate::data::x(); }\n\
                #[cfg(test)]\nmod tests { use crate::report; }\n";
    let got = crate_imports(&without_tests(&without_comments(text)));
    let want: BTreeSet<String> = ["config", "data", "methods", "nets", "train"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(got, want);
}

/// The module path (`["data", "seg"]`) of a source file (`src/data/seg.rs`, `src/data/mod.rs`).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The file that holds the deepest module of `path` (`crate::data::seg::SegSplit` ->
/// `data/seg.rs`), if any.
fn file_of(src: &Path, path: &[String]) -> Option<String> {
    for n in (1..=path.len()).rev() {
        let base = path[..n].join("/");
        for cand in [format!("{base}.rs"), format!("{base}/mod.rs")] {
            if src.join(&cand).is_file() {
                return Some(cand);
            }
        }
    }
    None
}

/// The paths used in `text` that start with `crate::`, `super::` or `self::`, made
/// absolute for the module at `here`, each as its segments (groups expanded one level).
fn used_paths(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        for (i, _) in text.match_indices(start) {
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':')
            {
                continue;
            }
            let mut base: Vec<String> = match start {
                "crate::" => Vec::new(),
                "super::" => here[..here.len().saturating_sub(1)].to_vec(),
                _ => here.to_vec(),
            };
            let mut rest = &text[i + start.len()..];
            // Further `super::`s.
            while let Some(r) = rest.strip_prefix("super::") {
                base.pop();
                rest = r;
            }
            let mut segs = base.clone();
            loop {
                let id: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if id.is_empty() {
                    break;
                }
                segs.push(id.clone());
                rest = &rest[id.len()..];
                match rest.strip_prefix("::") {
                    Some(r) if !r.starts_with('{') => rest = r,
                    Some(r) => {
                        // A group: each item as its own path below `segs`.
                        let end = r.find('}').unwrap_or(r.len());
                        for item in r[1..end].split(',') {
                            let id: String = item
                                .trim()
                                .chars()
                                .take_while(|c| c.is_alphanumeric() || *c == '_')
                                .collect();
                            if !id.is_empty() && id != "self" {
                                let mut p = segs.clone();
                                p.push(id);
                                out.push(p);
                            }
                        }
                        break;
                    }
                    None => break,
                }
            }
            out.push(segs);
        }
    }
    out
}

/// Every source file with the files it imports from, leaving out a module's imports of
/// its own submodules (a `mod.rs` naming its children, as a registry does).
fn file_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (rel, text) in source_files() {
        let name = rel.to_string_lossy().into_owned();
        let here = module_path(&rel);
        let deps = graph.entry(name.clone()).or_default();
        for p in used_paths(&text, &here) {
            let Some(file) = file_of(&src, &p) else {
                continue;
            };
            let target = module_path(Path::new(&file));
            let child_of_here = target.len() > here.len() && target.starts_with(&here);
            if file != name && !child_of_here {
                deps.insert(file);
            }
        }
    }
    graph
}

/// A cycle of `graph` as its files in order, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &String,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == n) {
            let mut cycle = path[i..].to_vec();
            cycle.push(n.clone());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.clone());
        for d in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(d, graph, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.clone());
        None
    }
    let mut done = BTreeSet::new();
    for n in graph.keys() {
        if let Some(c) = visit(n, graph, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn no_source_files_import_each_other_in_a_circle() {
    let graph = file_graph();
    assert!(graph.contains_key("data/seg/mod.rs"), "{graph:?}");
    if let Some(c) = find_cycle(&graph) {
        panic!(
            "source files import each other in a circle: {}",
            c.join(" -> ")
        );
    }
}

#[test]
fn the_circle_finder_sees_sibling_files_and_ignores_a_parent_naming_its_children() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let here = module_path(Path::new("data/loader.rs"));
    assert_eq!(here, ["data", "loader"]);
    let paths = used_paths(
        "use super::seg::{SegSplit, IGNORE}; fn f() { crate::data::idx::read(); }",
        &here,
    );
    let files: BTreeSet<String> = paths.iter().filter_map(|p| file_of(&src, p)).collect();
    assert!(
        files.contains("data/seg/mod.rs") && files.contains("data/idx.rs"),
        "{files:?}"
    );
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("a.rs", vec!["b.rs"]),
        ("b.rs", vec!["c.rs"]),
        ("c.rs", vec!["a.rs"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph).unwrap(),
        ["a.rs", "b.rs", "c.rs", "a.rs"]
    );
}
