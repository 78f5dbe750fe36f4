//! The modules' imports run one way: leaves at the bottom, then data and augmentation,
//! networks, methods, training, evaluation, the report and the command line on top. A
//! module may import only modules of lower layers (the leaves may use each other, without
//! cycles). Test code is left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

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
    ],
    &["augment", "plots"],
    &["data"],
    &["nets"],
    &["methods"],
    &["train"],
    &["eval"],
    &["report"],
    &["cli"],
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

fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
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
            let rel = path.strip_prefix(&src).unwrap();
            let first = rel
                .components()
                .next()
                .unwrap()
                .as_os_str()
                .to_string_lossy();
            let module = first.trim_end_matches(".rs").to_string();
            if module == "lib" || module == "main" {
                continue;
            }
            let text = without_tests(&without_comments(&std::fs::read_to_string(&path).unwrap()));
            let deps = graph.entry(module.clone()).or_default();
            deps.extend(crate_imports(&text).into_iter().filter(|m| *m != module));
        }
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
