//! Every seed through every target: the corpus (and any crash input saved there) stays a
//! regression test on every `cargo test`.

#[test]
fn every_seed_passes_every_target() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let mut n = 0;
    for (name, target) in fedai_fuzz::TARGETS {
        let dir = root.join(name);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .flatten()
            .collect();
        assert!(!files.is_empty(), "target {name} has no seeds");
        for f in files {
            target(&std::fs::read(f.path()).unwrap());
            n += 1;
        }
    }
    assert!(n >= 30, "{n} seeds");
}
