//! Compiles the C shim (src/shim.c) against Debian's libxslt, libexslt and
//! libxml2, found with pkg-config.

fn main() {
    println!("cargo:rerun-if-changed=src/shim.c");
    let mut build = cc::Build::new();
    for library in ["libxslt", "libexslt", "libxml-2.0"] {
        let found = pkg_config::Config::new()
            .probe(library)
            .unwrap_or_else(|e| panic!("pkg-config cannot find {library} (apt-get install libxslt1-dev libxml2-dev): {e}"));
        for path in found.include_paths {
            build.include(path);
        }
    }
    build
        .file("src/shim.c")
        .warnings(true)
        .compile("nodows_shim");
}
