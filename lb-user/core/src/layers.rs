//! The rule of this crate's layers (see the crate's documentation), checked on its sources: a
//! module may use only modules of a lower layer, or of its own layer where that is listed.

use std::{collections::BTreeSet, fs, path::Path};

/// Each module's layer, lowest first.
const LAYERS: &[(&str, u8)] = &[
    ("model", 1),
    ("check", 1),
    ("stats", 1),
    ("names", 1),
    ("netns", 1),
    ("flock", 1),
    ("scheduler", 2),
    ("estimator", 2),
    ("pressure", 2),
    ("health", 2),
    ("state", 2),
    ("sync", 2),
    ("announce", 2),
    ("station", 2),
    ("proto", 3),
    ("client", 3),
    ("listing", 4),
    ("help", 4),
    ("rules", 5),
    ("config_file", 5),
    ("diff", 6),
    ("import", 7),
];

/// Uses within one layer that are allowed (user, used).
const SAME_LAYER: &[(&str, &str)] = &[
    // The domain's names (ports, protocols) are parsed and printed with the model's types.
    ("names", "model"),
    // A health check's spec is part of a real server.
    ("model", "check"),
    // The config file reads netmasks and addresses as ipvsadm does.
    ("config_file", "rules"),
    // The client speaks the protocol.
    ("client", "proto"),
    // The help text names ipvsadm's version, which the listing prints.
    ("help", "listing"),
    // The state file keeps the sync daemons that run beside the configuration.
    ("state", "sync"),
];

fn layer(module: &str) -> u8 {
    LAYERS
        .iter()
        .find(|(m, _)| *m == module)
        .map(|(_, l)| *l)
        .unwrap_or_else(|| panic!("module {module} has no layer in layers.rs"))
}

/// The top-level modules `text` refers to as `crate::X`, including inside `use crate::{..}`.
fn crate_uses(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group: split at depth-0 commas.
            let (mut depth, mut item) = (0, String::new());
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(first_ident(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            if !item.trim().is_empty() {
                out.insert(first_ident(&item));
            }
        } else {
            out.insert(first_ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

fn first_ident(s: &str) -> String {
    s.trim_start()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Every .rs file of a module: `src/m.rs`, and `src/m/**` when it has a directory.
fn sources(src: &Path, module: &str) -> Vec<String> {
    let mut files = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if let Ok(t) = fs::read_to_string(&file) {
        files.push(t);
    }
    let mut dirs = vec![src.join(module)];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                files.push(fs::read_to_string(&p).expect("readable source"));
            }
        }
    }
    files
}

#[test]
fn imports_point_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for (module, own) in LAYERS {
        let files = sources(&src, module);
        assert!(!files.is_empty(), "no source for module {module}");
        // Unit tests may reach any layer: only the code itself is held to the rule.
        let code = files
            .iter()
            .map(|t| t.split("#[cfg(test)]\nmod tests").next().unwrap_or(t));
        for used in code.flat_map(crate_uses) {
            if used == *module {
                continue;
            }
            let theirs = layer(&used);
            let allowed =
                theirs < *own || (theirs == *own && SAME_LAYER.contains(&(*module, used.as_str())));
            if !allowed {
                wrong.push(format!(
                    "{module} (layer {own}) uses {used} (layer {theirs})"
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn every_module_has_a_layer() {
    let lib = fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("lib.rs");
    for line in lib.lines() {
        if let Some(m) = line.strip_prefix("pub mod ") {
            layer(m.trim_end_matches(';'));
        }
    }
}

#[test]
fn the_parser_finds_grouped_and_inline_uses() {
    let text = "use crate::{\n    model::{A, B},\n    proto::C,\n};\nfn f() { crate::stats::x(); }";
    let found: Vec<String> = crate_uses(text).into_iter().collect();
    assert_eq!(found, ["model", "proto", "stats"]);
}
