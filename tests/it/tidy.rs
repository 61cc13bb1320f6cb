//! House rules checked on the tree: every source file says what it owns (`//!` first), and every module is
//! on the map in ARCHITECTURE.md.

use std::path::{Path, PathBuf};

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_source_file_opens_with_what_it_owns_and_is_on_the_architecture_map() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    assert!(files.len() > 20);
    for file in files {
        let relative = file.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.starts_with("//!"), "{relative} must start with a //! comment saying what it owns");
        let name = file.file_name().unwrap().to_string_lossy().to_string();
        let on_map = architecture.contains(&format!("`{relative}`"))
            || (name == "mod.rs" && architecture.contains(&format!("`{}/`", relative.trim_end_matches("/mod.rs"))))
            || architecture.contains(&format!("`{name}`"));
        assert!(on_map, "ARCHITECTURE.md does not name {relative}");
    }
}
