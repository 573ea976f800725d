//! docs/architecture.md's crate graph is the workspace's: every crate's path dependencies on
//! other workspace crates, read from its Cargo.toml, must be exactly the `crate-graph` block.

use std::collections::BTreeMap;
use std::path::Path;

/// `name → [dep, dep?]` for every workspace crate that ships (not tests, examples, fuzz).
fn graph(root: &Path) -> BTreeMap<String, Vec<String>> {
    let mut manifests: Vec<_> = std::fs::read_dir(root.join("crates"))
        .unwrap()
        .map(|e| e.unwrap().path().join("Cargo.toml"))
        .collect();
    manifests.push(root.join("relay/Cargo.toml"));
    manifests.push(root.join("workers/Cargo.toml"));
    let mut out = BTreeMap::new();
    for m in manifests {
        let text = std::fs::read_to_string(&m).unwrap();
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap_or_else(|| panic!("no name in {}", m.display()))
            .to_owned();
        let mut deps = Vec::new();
        let mut in_deps = false;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('[') {
                in_deps = line == "[dependencies]";
                continue;
            }
            if !in_deps || !line.contains("path =") {
                continue;
            }
            let dep = line.split([' ', '=']).next().unwrap().to_owned();
            let optional = line.contains("optional = true");
            deps.push(if optional { format!("{dep}?") } else { dep });
        }
        deps.sort();
        out.insert(name, deps);
    }
    out
}

#[test]
fn the_documented_crate_graph_is_the_workspaces() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let want: String = graph(&root)
        .into_iter()
        .map(|(name, deps)| {
            format!(
                "{name}:{}{}\n",
                if deps.is_empty() { "" } else { " " },
                deps.join(", ")
            )
        })
        .collect();
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let block = doc
        .split("```text crate-graph\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/architecture.md has a crate-graph block");
    assert_eq!(
        block, want,
        "docs/architecture.md's crate graph is stale; the workspace's is:\n{want}"
    );
}
