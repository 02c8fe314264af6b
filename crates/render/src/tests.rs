use super::*;

#[test]
fn targets_must_be_absolute_and_stay_in_the_root() {
    assert!(check_target("/etc/nginx/nginx.conf").is_ok());
    for bad in ["etc/x", "/etc/../../x", "/etc/./x", "/etc/", "/", "/etc//x"] {
        assert!(check_target(bad).is_err(), "{bad} accepted");
    }
    let e = check_target("/etc/../../x").unwrap_err();
    assert!(e.contains("escapes the root"), "{e}");
}

#[test]
fn libxslt_messages_become_file_line_lines() {
    let raw = "compilation error: file /s/web/a.xsl line 4 element value-of\nxsl:value-of : could not compile select expression 'foo('\n";
    assert_eq!(
        xslt::tidy(raw, "/s/web/a.xsl", "the template does not compile"),
        "/s/web/a.xsl:4: element value-of: xsl:value-of : could not compile select expression 'foo('"
    );
}

#[test]
fn render_template_is_a_function_of_model_template_and_parameters() {
    let services = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../services");
    let model = Model::from_xml(
        r#"<model>
  <defaults>
    <service name="web"><key name="port">80</key><key name="title">nodows</key></service>
  </defaults>
  <profile name="dev">
    <service name="web"><key name="title">nodows (dev)</key></service>
  </profile>
  <server id="web01">
    <service name="web"><key name="port">8080</key></service>
  </server>
</model>"#,
        "example.xml",
    )
    .unwrap();
    let effective = model.effective(Some("web01"), "dev").unwrap();
    let page = services.join("web/var/www/html/index.html.xsl");
    let html =
        String::from_utf8(render_template(&effective, &page, &services, "web").unwrap()).unwrap();
    assert!(
        html.contains("<h1>nodows (dev)</h1><p>server=web01 mode=dev</p>"),
        "{html}"
    );
    let site = services.join("web/etc/nginx/sites-enabled/default.xsl");
    let text =
        String::from_utf8(render_template(&effective, &site, &services, "web").unwrap()).unwrap();
    assert!(text.contains("listen 8080 default_server;"), "{text}");
    // xsl:output method="text" is honoured: no XML declaration.
    assert!(text.starts_with("# rendered by nodows"), "{text}");
    assert_eq!(
        render_template(&effective, &site, &services, "web").unwrap(),
        text.as_bytes()
    );
}

fn effective_xml(services: usize) -> String {
    let mut xml = String::from("<model profile=\"p\">\n");
    for index in 0..services {
        xml.push_str(&format!(
            "  <service name=\"svc{index}\">\n    <key name=\"port\">{index}</key>\n  </service>\n"
        ));
    }
    xml.push_str("</model>\n");
    xml
}

/// Guards the idiom `$self`: the owning service's element, found through
/// the `name` IDs the effective document's services get when it is parsed.
#[test]
fn self_is_the_owning_services_element() {
    let dir = tempdir("self");
    let template = dir.join("t.xsl");
    std::fs::write(
        &template,
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="self" select="/.."/>
  <xsl:template match="/"><xsl:value-of select="$self/key[@name = 'port']"/>,<xsl:value-of select="id('svc3')/key"/></xsl:template>
</xsl:stylesheet>"#,
    )
    .unwrap();
    let xslt = xslt::Xslt::new(&dir).unwrap();
    let document = xslt.parse_document(&effective_xml(5), "effective").unwrap();
    let stylesheet = xslt.compile(&template).unwrap();
    let out = xslt
        .apply(&stylesheet, &document, &[("service", "svc1")], "t")
        .unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "1,3");
    // Without a `service` parameter, `$self` keeps its default.
    let out = xslt.apply(&stylesheet, &document, &[], "t").unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), ",3");
    let twice = xslt.parse_document(
        "<model><service name=\"a\"/><service name=\"a\"/></model>",
        "effective",
    );
    assert!(twice.is_err_and(|e| e.contains("service `a` appears twice")));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Guards against libxslt numbering every element of the effective document
/// for every transformation (xmlXPathOrderDocElems in
/// xsltNewTransformContext), which made a full render O(services^2): one
/// apply must cost about the same against 100 services as against 20,000.
#[test]
fn one_apply_does_not_walk_the_whole_model() {
    let dir = tempdir("scale");
    let template = dir.join("t.xsl");
    std::fs::write(
        &template,
        r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
  <xsl:output method="text"/>
  <xsl:param name="self"/>
  <xsl:template match="/"><xsl:value-of select="$self/key"/></xsl:template>
</xsl:stylesheet>"#,
    )
    .unwrap();
    let xslt = xslt::Xslt::new(&dir).unwrap();
    let small = xslt.parse_document(&effective_xml(100), "small").unwrap();
    let large = xslt
        .parse_document(&effective_xml(20_000), "large")
        .unwrap();
    let stylesheet = xslt.compile(&template).unwrap();
    let time = |document: &xslt::Document| {
        let started = std::time::Instant::now();
        for index in 0..100 {
            let service = format!("svc{index}");
            let out = xslt
                .apply(&stylesheet, document, &[("service", &service)], "t")
                .unwrap();
            assert_eq!(out, index.to_string().as_bytes());
        }
        started.elapsed()
    };
    // The best of several rounds, interleaved, so a busy machine hurts both.
    let (mut best_small, mut best_large) = (std::time::Duration::MAX, std::time::Duration::MAX);
    for _ in 0..5 {
        best_small = best_small.min(time(&small));
        best_large = best_large.min(time(&large));
    }
    assert!(
        best_large < best_small * 3,
        "100 applies took {best_small:?} against 100 services but {best_large:?} against 20,000"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Guards the diff's cost: each parent directory of the targets is resolved
/// once (not once per file, ~4 stats each with 1,000 files in one
/// directory), and the cached answer is the one `resolve_in_root` gives,
/// symlinked parents included.
#[test]
fn the_diff_resolves_each_parent_directory_once() {
    let root = tempdir("resolver");
    std::fs::create_dir_all(root.join("run/app")).unwrap();
    std::fs::create_dir_all(root.join("etc/bench")).unwrap();
    std::fs::create_dir_all(root.join("opt/real")).unwrap();
    std::os::unix::fs::symlink("/run", root.join("var-run")).unwrap();
    std::os::unix::fs::symlink("../opt/real", root.join("etc/linked")).unwrap();
    std::os::unix::fs::symlink("../../../../../escape", root.join("etc/up")).unwrap();
    std::os::unix::fs::symlink("real", root.join("opt/file-link")).unwrap();
    let mut targets: Vec<String> = (0..1000)
        .map(|index| format!("/etc/bench/svc{index:04}.conf"))
        .collect();
    targets.extend(
        [
            "/var-run/app/pid",
            "/etc/linked/x.conf",
            "/etc/up/y.conf",
            "/opt/file-link",
            "/top.conf",
            "/missing/dir/z.conf",
        ]
        .map(String::from),
    );
    let mut resolver = sync::RootResolver::new(&root);
    for target in &targets {
        assert_eq!(
            resolver.resolve(target).unwrap(),
            sync::resolve_in_root(&root, target).unwrap(),
            "{target}"
        );
    }
    assert_eq!(
        resolver.resolve("/var-run/app/pid").unwrap(),
        root.join("run/app/pid")
    );
    assert_eq!(
        resolver.resolve("/etc/up/y.conf").unwrap(),
        root.join("escape/y.conf")
    );
    // /etc/bench, /var-run/app, /etc/linked, /etc/up, /opt, /, /missing/dir.
    assert_eq!(resolver.walks, 7);
    let _ = std::fs::remove_dir_all(&root);
}

/// Guards the template path work of a render: each template is resolved
/// once (a cached directory plus an `O_NOFOLLOW` open, not `canonicalize`
/// per template and again by libxslt), a symlink still resolves to its
/// canonical target and is confined, and the stylesheet is compiled from the
/// bytes read, with its imports resolved against its path and confined.
#[test]
fn templates_are_resolved_once_and_compiled_from_the_bytes_read() {
    let dir = tempdir("templates");
    let services = dir.join("services");
    for sub in ["a", "b", "c", "common"] {
        std::fs::create_dir_all(services.join(sub)).unwrap();
    }
    let stylesheet = |body: &str| {
        format!(
            r#"<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">{body}<xsl:output method="text"/></xsl:stylesheet>"#
        )
    };
    let on_disk = stylesheet(
        r#"<xsl:import href="../common/lib.xsl"/><xsl:template match="/">disk</xsl:template>"#,
    );
    std::fs::write(services.join("a/a.xsl"), &on_disk).unwrap();
    std::fs::write(
        services.join("common/lib.xsl"),
        stylesheet(r#"<xsl:template name="lib">lib</xsl:template>"#),
    )
    .unwrap();
    std::fs::write(dir.join("outside.xsl"), stylesheet("")).unwrap();
    std::os::unix::fs::symlink("../a/a.xsl", services.join("b/link.xsl")).unwrap();
    std::os::unix::fs::symlink("../../outside.xsl", services.join("c/out.xsl")).unwrap();
    // Service directories that are symlinks, to one inside and one outside.
    std::os::unix::fs::symlink("a", services.join("e")).unwrap();
    std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
    std::fs::write(dir.join("elsewhere/a.xsl"), stylesheet("")).unwrap();
    std::os::unix::fs::symlink("../elsewhere", services.join("f")).unwrap();

    let canonical = services.canonicalize().unwrap();
    let mut templates = Templates::new(&services, &canonical);
    for _ in 0..3 {
        match templates.locate(&services.join("a/a.xsl"), true).unwrap() {
            Located::Inside(path, source) => {
                assert_eq!(path, canonical.join("a/a.xsl"));
                assert_eq!(source, on_disk.as_bytes());
            }
            Located::Outside => panic!("a/a.xsl is inside"),
        }
    }
    // services/a is known from the listing of services/: no stat at all.
    assert_eq!((templates.slow_paths, templates.directory_stats), (0, 0));
    assert!(matches!(
        templates.locate(&services.join("b/link.xsl"), true).unwrap(),
        Located::Inside(path, _) if path == canonical.join("a/a.xsl")
    ));
    assert!(matches!(
        templates.locate(&services.join("c/out.xsl"), true).unwrap(),
        Located::Outside
    ));
    assert!(matches!(
        templates
            .locate(&services.join("a/../../outside.xsl"), true)
            .unwrap(),
        Located::Outside
    ));
    assert!(matches!(
        templates.locate(&services.join("e/a.xsl"), true).unwrap(),
        Located::Inside(path, _) if path == canonical.join("a/a.xsl")
    ));
    assert!(matches!(
        templates.locate(&services.join("f/a.xsl"), true).unwrap(),
        Located::Outside
    ));
    let missing = templates.locate(&services.join("a/missing.xsl"), true);
    assert!(missing.is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound));

    let xslt = xslt::Xslt::new(&canonical).unwrap();
    let document = xslt.parse_document("<model/>", "effective").unwrap();
    // The bytes given are compiled, not the file at the path; the import
    // resolves against the path.
    let source = stylesheet(
        r#"<xsl:import href="../common/lib.xsl"/><xsl:template match="/">memory <xsl:call-template name="lib"/></xsl:template>"#,
    );
    let compiled = xslt
        .compile_source(source.as_bytes(), &canonical.join("a/a.xsl"))
        .unwrap();
    let out = xslt.apply(&compiled, &document, &[], "a.xsl").unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "memory lib");
    let escaping = stylesheet(r#"<xsl:import href="../../outside.xsl"/>"#);
    let refused = xslt.compile_source(escaping.as_bytes(), &canonical.join("a/a.xsl"));
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("refused")),
        "{:?}",
        refused.err()
    );
    let with_dtd = format!(
        "<!DOCTYPE x [<!ENTITY e SYSTEM \"/etc/passwd\">]>{}",
        stylesheet("")
    );
    let refused = xslt.compile_source(with_dtd.as_bytes(), &canonical.join("a/a.xsl"));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.contains("a DOCTYPE is not allowed")),
        "{:?}",
        refused.err()
    );
    // One parser context serves every template of a thread: a malformed
    // template's errors name it, and the next template is unaffected.
    let broken = xslt.compile_source(b"<xsl:stylesheet\n><oops>", &canonical.join("c/broken.xsl"));
    let broken = broken.err().unwrap_or_default();
    assert!(broken.contains("c/broken.xsl:2:"), "{broken}");
    assert!(!broken.contains("a/a.xsl"), "{broken}");
    let again = xslt
        .compile_source(source.as_bytes(), &canonical.join("a/a.xsl"))
        .unwrap();
    let out = xslt.apply(&again, &document, &[], "a.xsl").unwrap();
    assert_eq!(String::from_utf8(out).unwrap(), "memory lib");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Guards libxml2's allocator: mimalloc, set with xmlMemSetup on the first
/// `Xslt::new`. With glibc's malloc a third of a 1,000-service render's
/// instructions were malloc and free.
#[test]
fn libxml2_allocates_through_mimalloc() {
    type Free = Option<unsafe extern "C" fn(*mut std::ffi::c_void)>;
    type Malloc = Option<unsafe extern "C" fn(usize) -> *mut std::ffi::c_void>;
    type Realloc =
        Option<unsafe extern "C" fn(*mut std::ffi::c_void, usize) -> *mut std::ffi::c_void>;
    type Strdup = Option<unsafe extern "C" fn(*const std::ffi::c_char) -> *mut std::ffi::c_char>;
    extern "C" {
        fn xmlMemGet(
            free: *mut Free,
            malloc: *mut Malloc,
            realloc: *mut Realloc,
            strdup: *mut Strdup,
        ) -> std::ffi::c_int;
    }
    let dir = tempdir("allocator");
    let xslt = xslt::Xslt::new(&dir).unwrap();
    let (mut free, mut malloc, mut realloc, mut strdup) = (None, None, None, None);
    // SAFETY: xmlMemGet only stores the four function pointers.
    assert_eq!(
        unsafe { xmlMemGet(&mut free, &mut malloc, &mut realloc, &mut strdup) },
        0
    );
    assert_eq!(
        malloc.map(|f| f as usize),
        Some(libmimalloc_sys::mi_malloc as *const () as usize)
    );
    assert_eq!(
        free.map(|f| f as usize),
        Some(libmimalloc_sys::mi_free as *const () as usize)
    );
    assert_eq!(
        realloc.map(|f| f as usize),
        Some(libmimalloc_sys::mi_realloc as *const () as usize)
    );
    assert!(strdup.is_some());
    // And documents made and freed through it work.
    let document = xslt.parse_document(&effective_xml(3), "effective").unwrap();
    drop(document);
    drop(xslt);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Guards the parallel passes of a render (locating and reading templates,
/// the diff): the work is shared between threads, each with its own state,
/// and the results come back in item order, so problems are reported in the
/// order a one-thread pass gives.
#[test]
fn map_on_threads_shares_the_work_and_keeps_the_order() {
    let items: Vec<usize> = (0..1000).collect();
    let results = map_on_threads(
        &items,
        4,
        || (std::thread::current().id(), 0usize),
        |(thread, count), item| {
            *count += 1;
            (*item * 2, *thread, *count)
        },
    );
    assert_eq!(
        results.iter().map(|r| r.0).collect::<Vec<_>>(),
        items.iter().map(|i| i * 2).collect::<Vec<_>>()
    );
    let threads: std::collections::BTreeSet<String> =
        results.iter().map(|r| format!("{:?}", r.1)).collect();
    assert_eq!(threads.len(), 4, "{threads:?}");
    // Each thread counts only its own share: state is per thread.
    assert_eq!(results.iter().map(|r| r.2).max(), Some(250));
    assert_eq!(
        map_on_threads(&[] as &[usize], 4, || (), |_, i| *i),
        Vec::<usize>::new()
    );
    assert_eq!(map_on_threads(&[7usize], 4, || (), |_, i| *i), vec![7]);
}

fn tempdir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("nodows-render-unit-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}
