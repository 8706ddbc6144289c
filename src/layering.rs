//! The module graph, checked (tests only): each module's `May depend on:` sentence (in its
//! `//!` docs) against the crate modules its code names (`crate::x…`), and no cycle among the
//! modules.
//!
//! May depend on: nothing of the crate (it reads the sources as text).
//!
//! Rules:
//! - A module is a file `src/x.rs` or a folder `src/x/`; `lib.rs` (may use all) and `main.rs`
//!   (uses the library by name) are not checked.
//! - Every module's root file (`src/x.rs`, `src/x/mod.rs`) has a `May depend on:` sentence; a
//!   file inside a folder may have its own, else its module's applies. The sentence runs to
//!   the first `.` followed by a space or line end (outside backticks and parentheses). Each
//!   backticked name in it whose first segment (after `crate::`) is a module allows that
//!   module; anything else (`std`, `regex`, `super::defs`) is prose. (`Depends on` and
//!   `Depends only on` are read the same way, for docs written before this check.)
//! - Code is what remains without comments, string and character literals; in it every
//!   `crate::x` (also `crate::{x, y::z}`) is a use of module `x`. Naming a root item through
//!   `crate::` (a re-export) is refused: name the module.
//! - Uses of the module itself are free; every other one must be allowed, and the modules'
//!   uses (and their allowances) have no cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// What starts the sentence, in order of preference (older docs say `Depends on`).
const MARKS: [&str; 3] = ["May depend on:", "Depends only on", "Depends on"];

/// The crate's modules: name → source files, the root file first.
fn modules(src: &Path) -> BTreeMap<String, Vec<PathBuf>> {
    let mut out = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(src)
        .expect("read src/")
        .map(|e| e.expect("src/ entry").path())
        .collect();
    entries.sort();
    for path in entries {
        let Some(stem) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        if path.is_dir() {
            let root = path.join("mod.rs");
            let root = if root.exists() {
                root
            } else {
                src.join(format!("{stem}.rs"))
            };
            let mut files = vec![root.clone()];
            files.extend(rust_files(&path).into_iter().filter(|f| *f != root));
            out.insert(stem, files);
        } else if path.extension().is_some_and(|e| e == "rs")
            && stem != "lib"
            && stem != "main"
            && !src.join(&stem).is_dir()
        {
            out.insert(stem, vec![path]);
        }
    }
    out
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read module folder")
        .map(|e| e.expect("entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out
}

/// The `//!` docs of a file, one line each (paragraphs separated by an empty line).
fn inner_docs(source: &str) -> String {
    let mut out = String::new();
    for line in source.lines() {
        if let Some(rest) = line.trim_start().strip_prefix("//!") {
            out.push_str(rest.strip_prefix(' ').unwrap_or(rest));
            out.push('\n');
        }
    }
    out
}

/// The modules a `May depend on:` sentence allows; `None` without such a sentence.
fn allowed(docs: &str, modules: &BTreeSet<String>) -> Option<BTreeSet<String>> {
    let start = MARKS
        .iter()
        .find_map(|m| docs.find(m).map(|at| at + m.len()))?;
    let rest = &docs[start..];
    let rest = &rest[..rest.find("\n\n").unwrap_or(rest.len())];
    let mut out = BTreeSet::new();
    let (mut tick, mut parens, mut name) = (false, 0usize, String::new());
    let chars: Vec<char> = rest.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '`' if tick => {
                let path = name.trim().trim_start_matches("crate::");
                let first = path.split("::").next().unwrap_or("");
                if modules.contains(first) {
                    out.insert(first.to_string());
                }
                name.clear();
                tick = false;
            }
            '`' => tick = true,
            _ if tick => name.push(c),
            '(' => parens += 1,
            ')' => parens = parens.saturating_sub(1),
            '.' if parens == 0 && chars.get(i + 1).is_none_or(|n| n.is_whitespace()) => break,
            _ => {}
        }
    }
    Some(out)
}

/// `source` without comments, string literals and character literals (each replaced by a
/// space), so that only code is searched.
fn code_only(source: &str) -> String {
    let b: Vec<char> = source.chars().collect();
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c == 'r'
            && matches!(next, Some('"' | '#'))
            && (i == 0 || !ident(b[i - 1]) || (b[i - 1] == 'b' && (i < 2 || !ident(b[i - 2]))))
        {
            // Raw string: r"…", r#"…"#, br"…".
            let mut j = i + 1;
            let mut hashes = 0;
            while b.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if b.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                match b.get(j) {
                    None => break,
                    Some('"') if (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) => {
                        j += 1 + hashes;
                        break;
                    }
                    _ => j += 1,
                }
            }
            i = j;
            out.push(' ');
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push(' ');
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), or a lifetime / label (left as is).
            if next == Some('\\') {
                let mut j = i + 2;
                while j < b.len() && b[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
                out.push(' ');
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push(' ');
            } else {
                out.push(c);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// The first segment of every `crate::` path in `code` (both `crate::x::y` and
/// `crate::{x, y::z}`).
fn crate_refs(code: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let at = from + at;
        from = at + "crate::".len();
        if code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| ident(c) || c == '$')
        {
            continue;
        }
        let rest = code[from..].trim_start();
        if let Some(group) = rest.strip_prefix('{') {
            // Names at the group's top level: the first segment of each item.
            let (mut depth, mut item_start) = (1usize, true);
            let mut name = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 1 => break,
                    '}' => depth -= 1,
                    ',' if depth == 1 => {
                        if !name.is_empty() {
                            out.insert(std::mem::take(&mut name));
                        }
                        item_start = true;
                    }
                    c if depth == 1 && item_start && ident(c) => name.push(c),
                    _ if depth == 1 && item_start && !name.is_empty() => {
                        out.insert(std::mem::take(&mut name));
                        item_start = false;
                    }
                    _ => {}
                }
            }
            if !name.is_empty() {
                out.insert(name);
            }
        } else {
            let name: String = rest.chars().take_while(|c| ident(*c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// A cycle in `graph`, as the modules along it (the first repeated at the end).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == n) {
            let mut cycle = path[at..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        path.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            if let Some(c) = visit(m, graph, done, path) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|n| visit(n, graph, &mut done, &mut Vec::new()))
}

/// The module graph: what each module's code uses, and what its docs allow; plus every use
/// the docs do not allow (one message each).
struct Graph {
    uses: BTreeMap<String, BTreeSet<String>>,
    allows: BTreeMap<String, BTreeSet<String>>,
    problems: Vec<String>,
}

fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let names: BTreeSet<String> = mods.keys().cloned().collect();
    let rel = |p: &Path| {
        p.strip_prefix(src.parent().unwrap_or(src))
            .unwrap_or(p)
            .display()
            .to_string()
    };
    let mut g = Graph {
        uses: BTreeMap::new(),
        allows: BTreeMap::new(),
        problems: Vec::new(),
    };
    for (m, files) in &mods {
        let read = |f: &PathBuf| std::fs::read_to_string(f).expect("read a source file");
        let root = &files[0];
        let module_allowed = allowed(&inner_docs(&read(root)), &names).unwrap_or_else(|| {
            g.problems.push(format!(
                "{}: no `May depend on:` sentence in its `//!` docs",
                rel(root)
            ));
            BTreeSet::new()
        });
        for f in files {
            let source = read(f);
            let file_allowed =
                allowed(&inner_docs(&source), &names).unwrap_or_else(|| module_allowed.clone());
            g.allows
                .entry(m.clone())
                .or_default()
                .extend(file_allowed.iter().cloned());
            for used in crate_refs(&code_only(&source)) {
                if used == *m {
                    continue;
                }
                if !names.contains(&used) {
                    g.problems.push(format!(
                        "{} names `crate::{used}`, which is not a module: name the module it is in",
                        rel(f)
                    ));
                    continue;
                }
                if !file_allowed.contains(&used) {
                    g.problems.push(format!(
                        "{} uses `crate::{used}`, which its `May depend on:` line does not list",
                        rel(f)
                    ));
                }
                g.uses.entry(m.clone()).or_default().insert(used);
            }
        }
    }
    for a in g.allows.values_mut() {
        a.retain(|x| names.contains(x));
    }
    for (m, a) in g.allows.iter_mut() {
        a.remove(m);
    }
    g
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_module_uses_only_what_its_docs_allow() {
    let g = graph(&src_dir());
    assert!(
        g.problems.is_empty(),
        "module dependencies outside the `May depend on:` lines:\n  {}",
        g.problems.join("\n  ")
    );
}

#[test]
fn the_module_graph_has_no_cycle() {
    let g = graph(&src_dir());
    if let Some(c) = find_cycle(&g.uses) {
        panic!("`use crate::` cycle: {}", c.join(" → "));
    }
    if let Some(c) = find_cycle(&g.allows) {
        panic!(
            "the `May depend on:` lines allow a cycle: {}",
            c.join(" → ")
        );
    }
}

#[test]
fn the_source_reader_sees_code_only() {
    let code = code_only(
        "use crate::a::X; // crate::b\n/* crate::c /* nested */ crate::d */ let s = \"crate::e\";\n\
         let r = r#\"crate::f \"# ; let q = '\"'; fn f<'a>(x: &'a u8) { crate::g::h(); }\n\
         use crate::{i, j::{K, L}, m as n};",
    );
    let refs: Vec<String> = crate_refs(&code).into_iter().collect();
    assert_eq!(refs, ["a", "g", "i", "j", "m"]);
    let names: BTreeSet<String> = ["conn", "http1", "stats"].map(String::from).into();
    let docs =
        "Intro.\n\nMay depend on: `conn` (e.g. `stats`), `crate::http1::x`, std.\nNot `stats`.\n";
    let a: Vec<String> = allowed(docs, &names)
        .expect("has the sentence")
        .into_iter()
        .collect();
    assert_eq!(a, ["conn", "http1", "stats"]);
    assert!(allowed("no such sentence", &names).is_none());
}
