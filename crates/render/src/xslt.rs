//! Safe wrapper over the C shim (src/shim.c) and libxslt.
//!
//! libxslt keeps its security preferences and loader in globals, so they are
//! set under one process-wide lock, held by [`Xslt`]. While it is held,
//! [`Xslt::render_all`] may use several threads, each with its own parsed
//! document, stylesheets and (thread-local) error buffer.

use std::ffi::{c_char, c_int, c_uchar, c_void, CString};
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

extern "C" {
    fn nodows_xslt_init(
        dir: *const c_char,
        free: unsafe extern "C" fn(*mut c_void),
        malloc: unsafe extern "C" fn(usize) -> *mut c_void,
        realloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    ) -> c_int;
    fn nodows_thread_init();
    fn nodows_thread_done();
    fn nodows_errors(len: *mut usize) -> *const c_char;
    fn nodows_clear_errors();
    fn nodows_parse_document(buf: *const c_char, len: c_int, name: *const c_char) -> *mut c_void;
    fn nodows_free_document(doc: *mut c_void);
    fn nodows_compile(path: *const c_char) -> *mut c_void;
    fn nodows_compile_memory(buf: *const c_char, len: c_int, url: *const c_char) -> *mut c_void;
    fn nodows_free_stylesheet(style: *mut c_void);
    fn nodows_apply(
        style: *mut c_void,
        doc: *mut c_void,
        params: *const *const c_char,
        self_service: *const c_char,
        out: *mut *mut c_uchar,
        out_len: *mut c_int,
    ) -> c_int;
    fn nodows_free_output(out: *mut c_uchar);
}

static LOCK: Mutex<()> = Mutex::new(());

/// One rendered template: its output or its error messages.
pub type Rendered = Result<Vec<u8>, String>;

/// One template to render: its canonical path (its base URI and its name in
/// messages), its bytes, already read and checked to lie below the allowed
/// directory, and its string parameters.
pub struct Job {
    pub template: std::path::PathBuf,
    pub source: Vec<u8>,
    pub params: Vec<(String, String)>,
}

/// What one render thread did: (job index, result) pairs, or why it could
/// not start.
type Batch = Result<Vec<(usize, Rendered)>, String>;

/// Exclusive access to libxslt, with local file reads allowed only below
/// `allowed_dir`.
pub struct Xslt {
    _guard: MutexGuard<'static, ()>,
}

/// A parsed input document.
pub struct Document<'x> {
    doc: *mut c_void,
    _xslt: std::marker::PhantomData<&'x Xslt>,
}

/// A compiled stylesheet kept across locks, by the long-running renderer
/// ([`crate::incremental`]): it is used and freed only through an [`Xslt`]
/// ([`Xslt::apply_kept`], [`Xslt::free_kept`]); one never freed is leaked,
/// never freed without the lock.
pub struct Kept {
    style: *mut c_void,
}

// SAFETY: libxslt stylesheets are not tied to a thread; every use goes
// through an `Xslt`, which holds the process-wide lock.
unsafe impl Send for Kept {}

/// A compiled stylesheet.
pub struct Stylesheet<'x> {
    style: *mut c_void,
    _xslt: std::marker::PhantomData<&'x Xslt>,
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{text:?} contains a NUL byte"))
}

impl Xslt {
    /// Takes the lock and sets the directory below which templates and
    /// `document()` may read files.
    pub fn new(allowed_dir: &Path) -> Result<Xslt, String> {
        let guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let dir = c_string(&allowed_dir.to_string_lossy())?;
        // SAFETY: the lock is held; `dir` is a valid C string; mimalloc's
        // functions are libxml2's allocator from the first call on (before
        // any other libxml2 call, which only this module makes).
        let rc = unsafe {
            nodows_xslt_init(
                dir.as_ptr(),
                libmimalloc_sys::mi_free,
                libmimalloc_sys::mi_malloc,
                libmimalloc_sys::mi_realloc,
            )
        };
        if rc != 0 {
            return Err(format!(
                "{}: cannot use this directory for templates",
                allowed_dir.display()
            ));
        }
        // SAFETY: lock held.
        unsafe { nodows_clear_errors() };
        Ok(Xslt { _guard: guard })
    }

    /// Renders every job against the document `xml`, on up to `threads`
    /// threads; results are in job order.
    pub fn render_all(
        &self,
        xml: &str,
        jobs: &[Job],
        threads: usize,
    ) -> Result<Vec<Rendered>, String> {
        let threads = threads.clamp(1, jobs.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let work = |thread_index: usize| -> Batch {
            if thread_index > 0 {
                // SAFETY: sets this thread's libxml2 error handlers.
                unsafe { nodows_thread_init() };
            }
            let document = self.parse_document(xml, "effective-model.xml")?;
            let mut done = Vec::new();
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(job) = jobs.get(index) else {
                    break;
                };
                let name = job.template.display().to_string();
                let params: Vec<(&str, &str)> = job
                    .params
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let result = self
                    .compile_source(&job.source, &job.template)
                    .and_then(|stylesheet| self.apply(&stylesheet, &document, &params, &name));
                done.push((index, result));
            }
            // SAFETY: frees this thread's template parser (its stylesheets
            // are freed already; the next compile makes a new one).
            unsafe { nodows_thread_done() };
            Ok(done)
        };
        let mut results: Vec<Option<Rendered>> = vec![None; jobs.len()];
        let batches: Vec<Batch> = std::thread::scope(|scope| {
            let handles: Vec<_> = (1..threads)
                .map(|thread_index| scope.spawn(move || work(thread_index)))
                .collect();
            let mut batches = vec![work(0)];
            for handle in handles {
                batches.push(
                    handle
                        .join()
                        .unwrap_or_else(|_| Err("a render thread panicked".to_string())),
                );
            }
            batches
        });
        for batch in batches {
            for (index, result) in batch? {
                results[index] = Some(result);
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err("template was not rendered".to_string())))
            .collect())
    }

    /// The messages libxml2/libxslt reported since the last call on this
    /// thread, cleared.
    fn take_errors(&self) -> String {
        let mut len = 0usize;
        // SAFETY: lock held; the shim returns a buffer of `len` bytes that
        // stays valid until the next shim call.
        let text = unsafe {
            let ptr = nodows_errors(&mut len);
            let bytes = std::slice::from_raw_parts(ptr as *const u8, len);
            String::from_utf8_lossy(bytes).into_owned()
        };
        // SAFETY: lock held.
        unsafe { nodows_clear_errors() };
        text
    }

    /// Parses an input document held in memory; `name` is used in messages.
    pub fn parse_document(&self, xml: &str, name: &str) -> Result<Document<'_>, String> {
        let name_c = c_string(name)?;
        let len = c_int::try_from(xml.len()).map_err(|_| format!("{name}: document too large"))?;
        // SAFETY: lock held; buffer and name are valid for the call.
        let doc =
            unsafe { nodows_parse_document(xml.as_ptr() as *const c_char, len, name_c.as_ptr()) };
        let errors = self.take_errors();
        if doc.is_null() {
            return Err(tidy(&errors, name, "cannot parse the document"));
        }
        Ok(Document {
            doc,
            _xslt: std::marker::PhantomData,
        })
    }

    /// Compiles a stylesheet file.
    pub fn compile(&self, path: &Path) -> Result<Stylesheet<'_>, String> {
        let name = path.to_string_lossy();
        let path_c = c_string(&name)?;
        // SAFETY: lock held; path is a valid C string.
        let style = unsafe { nodows_compile(path_c.as_ptr()) };
        self.compiled(style, &name)
    }

    /// Compiles a stylesheet from its bytes; `path` is its canonical path,
    /// the base URI of its `xsl:import`s and `xsl:include`s (which are read
    /// under the security prefs as usual). The caller has checked that
    /// `path` lies below the allowed directory and read `source` from it.
    pub fn compile_source(&self, source: &[u8], path: &Path) -> Result<Stylesheet<'_>, String> {
        let name = path.to_string_lossy();
        let path_c = c_string(&name)?;
        let len =
            c_int::try_from(source.len()).map_err(|_| format!("{name}: template too large"))?;
        // SAFETY: lock held; the buffer is `len` bytes and the path a valid
        // C string, both live for the call.
        let style = unsafe {
            nodows_compile_memory(source.as_ptr() as *const c_char, len, path_c.as_ptr())
        };
        self.compiled(style, &name)
    }

    /// The result of a compile: the stylesheet, or libxslt's messages.
    fn compiled(&self, style: *mut c_void, name: &str) -> Result<Stylesheet<'_>, String> {
        let errors = self.take_errors();
        if style.is_null() {
            return Err(tidy(&errors, name, "the template does not compile"));
        }
        Ok(Stylesheet {
            style,
            _xslt: std::marker::PhantomData,
        })
    }

    /// Applies `stylesheet` to `document` with string parameters and
    /// returns the serialized result (as `xsl:output` asks: text, xml, html).
    /// If there is a `service` parameter and the stylesheet declares a
    /// top-level `<xsl:param name="self"/>`, `$self` is that service's
    /// `<service>` element (`id($service)`, found in constant time).
    pub fn apply(
        &self,
        stylesheet: &Stylesheet<'_>,
        document: &Document<'_>,
        params: &[(&str, &str)],
        template_name: &str,
    ) -> Result<Vec<u8>, String> {
        self.apply_style(stylesheet.style, document, params, template_name)
    }

    /// Compiles a stylesheet that outlives this lock (see [`Kept`]).
    pub fn compile_kept(&self, source: &[u8], path: &Path) -> Result<Kept, String> {
        let stylesheet = std::mem::ManuallyDrop::new(self.compile_source(source, path)?);
        Ok(Kept {
            style: stylesheet.style,
        })
    }

    /// [`Xslt::apply`] with a kept stylesheet.
    pub fn apply_kept(
        &self,
        kept: &Kept,
        document: &Document<'_>,
        params: &[(&str, &str)],
        template_name: &str,
    ) -> Result<Vec<u8>, String> {
        self.apply_style(kept.style, document, params, template_name)
    }

    /// Frees a kept stylesheet (under this lock).
    pub fn free_kept(&self, kept: Kept) {
        // SAFETY: lock held; `kept` is consumed, so its pointer is not used again.
        unsafe { nodows_free_stylesheet(kept.style) }
    }

    fn apply_style(
        &self,
        style: *mut c_void,
        document: &Document<'_>,
        params: &[(&str, &str)],
        template_name: &str,
    ) -> Result<Vec<u8>, String> {
        let mut owned = Vec::with_capacity(params.len() * 2);
        for (name, value) in params {
            owned.push(c_string(name)?);
            owned.push(c_string(value)?);
        }
        let mut pointers: Vec<*const c_char> = owned.iter().map(|s| s.as_ptr()).collect();
        pointers.push(std::ptr::null());
        let self_service = params
            .iter()
            .position(|(name, _)| *name == "service")
            .map_or(std::ptr::null(), |index| owned[index * 2 + 1].as_ptr());
        let mut out: *mut c_uchar = std::ptr::null_mut();
        let mut out_len: c_int = 0;
        // SAFETY: lock held; the style and doc pointers are live (owned by
        // the wrappers); `pointers` is NULL-terminated and, like
        // `self_service` (NULL or a C string in `owned`), outlives the call.
        let rc = unsafe {
            nodows_apply(
                style,
                document.doc,
                pointers.as_ptr(),
                self_service,
                &mut out,
                &mut out_len,
            )
        };
        let errors = self.take_errors();
        if rc != 0 {
            return Err(tidy(&errors, template_name, "the template failed"));
        }
        let bytes = if out.is_null() {
            Vec::new()
        } else {
            // SAFETY: the shim returned `out_len` bytes at `out`, freed below.
            let bytes =
                unsafe { std::slice::from_raw_parts(out, out_len.max(0) as usize).to_vec() };
            // SAFETY: `out` came from libxml2's allocator.
            unsafe { nodows_free_output(out) };
            bytes
        };
        Ok(bytes)
    }
}

impl Drop for Document<'_> {
    fn drop(&mut self) {
        // SAFETY: the Xslt (and so the lock) outlives this document.
        unsafe { nodows_free_document(self.doc) }
    }
}

impl Drop for Stylesheet<'_> {
    fn drop(&mut self) {
        // SAFETY: the Xslt (and so the lock) outlives this stylesheet.
        unsafe { nodows_free_stylesheet(self.style) }
    }
}

/// Turns libxslt's multi-line messages ("compilation error: file F line N
/// element E" followed by the reason) into `F:N: element E: reason` lines.
/// Falls back to `name: what` when libxslt said nothing.
pub(crate) fn tidy(errors: &str, name: &str, what: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut pending: Option<String> = None;
    for line in errors
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
    {
        let header = line
            .strip_prefix("compilation error: ")
            .or_else(|| line.strip_prefix("runtime error: "));
        if let Some(header) = header {
            if let Some(previous) = pending.take() {
                out.push(format!("{previous}: {what}"));
            }
            pending = Some(location(header));
            continue;
        }
        let line = line.trim();
        let line = line.strip_prefix("error : ").unwrap_or(line);
        if line == "error" {
            continue;
        }
        let line = lowercase_first(line);
        match pending.take() {
            Some(location) => out.push(format!("{location}: {line}")),
            None if line.starts_with(name) => out.push(line),
            None => out.push(format!("{name}: {line}")),
        }
    }
    if let Some(previous) = pending {
        out.push(format!("{previous}: {what}"));
    }
    if out.is_empty() {
        return format!("{name}: {what}");
    }
    out.dedup();
    out.join("\n")
}

/// `Local file read ...` -> `local file read ...`; acronyms stay as they are.
fn lowercase_first(text: &str) -> String {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if first.is_uppercase() && second.is_lowercase() => {
            first.to_lowercase().chain(text.chars().skip(1)).collect()
        }
        _ => text.to_string(),
    }
}

/// `file F line N element E` -> `F:N: element E`.
fn location(header: &str) -> String {
    let Some(rest) = header.strip_prefix("file ") else {
        return header.to_string();
    };
    if let Some((file, rest)) = rest.split_once(" line ") {
        let (line, element) = match rest.split_once(' ') {
            Some((line, element)) => (line, element.trim()),
            None => (rest, ""),
        };
        if element.is_empty() {
            return format!("{file}:{line}");
        }
        return format!("{file}:{line}: {element}");
    }
    rest.to_string()
}
