/*
 * Thin C shim between the renderer and libxslt/libxml2.
 *
 * It exists because libxml2's and libxslt's error callbacks are variadic
 * (they cannot be written in stable Rust), and to keep every security
 * setting in one place:
 *   - security prefs forbid network reads, file writes, directory creation
 *     and network writes; local reads are allowed only below one directory
 *     (the services directory), checked on the canonical path;
 *   - every document (templates, imports, document()) is parsed without
 *     entity substitution, without DTD loading, without network access, and
 *     refused if it carries a DTD at all.
 * All functions must be called with the Rust side's global lock held.
 */
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libxml/parser.h>
#include <libxml/valid.h>
#include <libxml/xmlerror.h>
#include <libxml/xpath.h>
#include <libxml/xpathInternals.h>
#include <libxslt/extensions.h>
#include <libxslt/documents.h>
#include <libxslt/imports.h>
#include <libxslt/security.h>
#include <libxslt/transform.h>
#include <libxslt/variables.h>
#include <libxslt/xslt.h>
#include <libxslt/xsltInternals.h>
#include <libxslt/xsltutils.h>
#include <libexslt/exslt.h>

/* Per thread: the renderer may render on several threads at once. */
static __thread char *errors = NULL;
static __thread size_t errors_len = 0;
static __thread size_t errors_cap = 0;
static char allowed_dir[PATH_MAX + 1] = "";
static xsltSecurityPrefsPtr prefs = NULL;
static xsltDocLoaderFunc original_loader = NULL;

static void append(const char *text, size_t len) {
    if (errors_len + len + 1 > errors_cap) {
        size_t cap = errors_cap ? errors_cap : 256;
        while (errors_len + len + 1 > cap)
            cap *= 2;
        char *grown = realloc(errors, cap);
        if (grown == NULL)
            return;
        errors = grown;
        errors_cap = cap;
    }
    memcpy(errors + errors_len, text, len);
    errors_len += len;
    errors[errors_len] = '\0';
}

static void generic_error(void *ctx, const char *fmt, ...) {
    (void)ctx;
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    append(buf, (size_t)n);
}

/* libxml2 parse errors, with file and line. */
static void structured_error(void *ctx, xmlErrorPtr error) {
    (void)ctx;
    if (error == NULL || error->level == XML_ERR_WARNING)
        return;
    char buf[4096];
    const char *message = error->message ? error->message : "error\n";
    int n = error->file ? snprintf(buf, sizeof buf, "%s:%d: %s", error->file, error->line, message)
                        : snprintf(buf, sizeof buf, "%s", message);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof buf)
        n = sizeof buf - 1;
    append(buf, (size_t)n);
    if (n > 0 && buf[n - 1] != '\n')
        append("\n", 1);
}

static int read_file_check(xsltSecurityPrefsPtr sec, xsltTransformContextPtr ctxt, const char *value) {
    (void)sec;
    (void)ctxt;
    char resolved[PATH_MAX + 1];
    if (value == NULL || allowed_dir[0] == '\0')
        return 0;
    if (realpath(value, resolved) == NULL)
        return 0;
    size_t n = strlen(allowed_dir);
    if (strncmp(resolved, allowed_dir, n) != 0)
        return 0;
    return resolved[n] == '/' || resolved[n] == '\0';
}

/* Every document libxslt loads goes through here. */
static xmlDocPtr safe_loader(const xmlChar *uri, xmlDictPtr dict, int options, void *ctxt, xsltLoadType type) {
    options &= ~(XML_PARSE_NOENT | XML_PARSE_DTDLOAD | XML_PARSE_DTDATTR | XML_PARSE_DTDVALID);
    options |= XML_PARSE_NONET;
    xmlDocPtr doc = original_loader(uri, dict, options, ctxt, type);
    if (doc != NULL && (doc->intSubset != NULL || doc->extSubset != NULL)) {
        generic_error(NULL, "%s:1: a DOCTYPE is not allowed (DTDs and external entities are refused)\n",
                      (const char *)uri);
        xmlFreeDoc(doc);
        return NULL;
    }
    return doc;
}

/*
 * Escaping helpers for templates, in the namespace urn:nodows
 * (xmlns:nodows="urn:nodows"):
 *   nodows:line(s)      s itself; fails the render if s holds a control
 *                       character (newline, tab, NUL, DEL, C1): the guard for
 *                       line-oriented formats (sysctl.conf, sshd_config, nginx)
 *   nodows:sh-quote(s)  s as one POSIX shell word: '...' with every ' written
 *                       as '\'' (fails on a control character too)
 * Model values are validated against their declared types before any
 * template runs; these make a template safe on its own as well.
 */
#define NODOWS_NS ((const xmlChar *)"urn:nodows")

/* The first control character's byte offset in s, or -1: C0, DEL, and C1
 * (U+0080 to U+009F, UTF-8 0xC2 0x80-0x9F). */
static long control_character(const xmlChar *s) {
    for (long i = 0; s[i] != 0; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return i;
        if (s[i] == 0xc2 && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            return i;
    }
    return -1;
}

/* Fails the transformation with a message naming the function. */
static void helper_failed(xmlXPathParserContextPtr ctxt, const char *function, const char *why) {
    xsltTransformContextPtr tctxt = xsltXPathGetTransformContext(ctxt);
    xsltTransformError(tctxt, NULL, tctxt ? tctxt->inst : NULL, "nodows:%s(): %s\n", function, why);
    if (tctxt != NULL)
        tctxt->state = XSLT_STATE_STOPPED;
    xmlXPathErr(ctxt, XPATH_EXPR_ERROR);
}

/* Pops the one string argument of `function`, or fails. */
static xmlChar *string_argument(xmlXPathParserContextPtr ctxt, int nargs, const char *function) {
    if (nargs != 1) {
        helper_failed(ctxt, function, "takes exactly one argument");
        return NULL;
    }
    xmlChar *value = xmlXPathPopString(ctxt);
    if (value == NULL || xmlXPathCheckError(ctxt)) {
        xmlFree(value);
        return NULL;
    }
    if (control_character(value) >= 0) {
        xmlFree(value);
        helper_failed(ctxt, function,
                      "the value holds a control character (newline, tab, NUL...): refused, it would change the file's structure");
        return NULL;
    }
    return value;
}

static void line_function(xmlXPathParserContextPtr ctxt, int nargs) {
    xmlChar *value = string_argument(ctxt, nargs, "line");
    if (value != NULL)
        xmlXPathReturnString(ctxt, value);
}

static void sh_quote_function(xmlXPathParserContextPtr ctxt, int nargs) {
    xmlChar *value = string_argument(ctxt, nargs, "sh-quote");
    if (value == NULL)
        return;
    size_t quotes = 0, len = 0;
    for (; value[len] != 0; len++)
        quotes += value[len] == '\'';
    xmlChar *quoted = xmlMalloc(len + quotes * 3 + 3);
    if (quoted == NULL) {
        xmlFree(value);
        helper_failed(ctxt, "sh-quote", "out of memory");
        return;
    }
    size_t at = 0;
    quoted[at++] = '\'';
    for (size_t i = 0; i < len; i++) {
        if (value[i] == '\'') {
            memcpy(quoted + at, "'\\''", 4);
            at += 4;
        } else {
            quoted[at++] = value[i];
        }
    }
    quoted[at++] = '\'';
    quoted[at] = 0;
    xmlFree(value);
    xmlXPathReturnString(ctxt, quoted);
}

/* Must be called on every thread that uses the shim (libxml2's error
 * handlers are per thread). */
void nodows_thread_init(void) {
    xmlSetGenericErrorFunc(NULL, generic_error);
    xmlSetStructuredErrorFunc(NULL, structured_error);
}

/* libxml2's allocator (see nodows_xslt_init); strdup is built on its malloc. */
static xmlMallocFunc shim_malloc = NULL;

static char *shim_strdup(const char *text) {
    size_t len = strlen(text) + 1;
    char *copy = shim_malloc(len);
    if (copy != NULL)
        memcpy(copy, text, len);
    return copy;
}

/* Returns 0 on success. May be called again to change the allowed directory
 * (never while another thread renders). The first call sets libxml2's
 * allocator to `malloc_fn`/`realloc_fn`/`free_fn` (xmlMemSetup must come
 * before any other libxml2 call): a render spends about a third of its
 * instructions in malloc and free, and glibc's, with its small per-thread
 * cache, is slow at libxml2's many small short-lived blocks. */
int nodows_xslt_init(const char *dir, xmlFreeFunc free_fn, xmlMallocFunc malloc_fn, xmlReallocFunc realloc_fn) {
    if (prefs == NULL) {
        shim_malloc = malloc_fn;
        if (xmlMemSetup(free_fn, malloc_fn, realloc_fn, shim_strdup) != 0)
            return -1;
        xmlInitParser();
        exsltRegisterAll();
        if (xsltRegisterExtModuleFunction((const xmlChar *)"line", NODOWS_NS, line_function) != 0 ||
            xsltRegisterExtModuleFunction((const xmlChar *)"sh-quote", NODOWS_NS, sh_quote_function) != 0)
            return -1;
        xmlSubstituteEntitiesDefault(0);
        xmlLoadExtDtdDefaultValue = 0;
        xsltSetGenericErrorFunc(NULL, generic_error);
        original_loader = xsltDocDefaultLoader;
        xsltSetLoaderFunc(safe_loader);
        prefs = xsltNewSecurityPrefs();
        if (prefs == NULL)
            return -1;
        if (xsltSetSecurityPrefs(prefs, XSLT_SECPREF_READ_FILE, read_file_check) != 0 ||
            xsltSetSecurityPrefs(prefs, XSLT_SECPREF_WRITE_FILE, xsltSecurityForbid) != 0 ||
            xsltSetSecurityPrefs(prefs, XSLT_SECPREF_CREATE_DIRECTORY, xsltSecurityForbid) != 0 ||
            xsltSetSecurityPrefs(prefs, XSLT_SECPREF_READ_NETWORK, xsltSecurityForbid) != 0 ||
            xsltSetSecurityPrefs(prefs, XSLT_SECPREF_WRITE_NETWORK, xsltSecurityForbid) != 0)
            return -1;
        xsltSetDefaultSecurityPrefs(prefs);
        /*
         * xsltNewTransformContext numbers every element of the source
         * document (xmlXPathOrderDocElems) for every transformation unless
         * the debugger status is set: with one template per file that walk
         * of the whole model made each apply O(model) and a full render
         * O(n^2). The effective document is numbered once when it is parsed
         * (nodows_parse_document) and never changes shape, so the walk is
         * skipped; each context's own debugStatus is set back to
         * XSLT_DEBUG_NONE (nodows_apply), and with no debugger callbacks
         * registered the global status has no other effect.
         */
        xsltSetDebuggerStatus(XSLT_DEBUG_RUN);
    }
    nodows_thread_init();
    if (dir == NULL || realpath(dir, allowed_dir) == NULL) {
        allowed_dir[0] = '\0';
        return -1;
    }
    return 0;
}

const char *nodows_errors(size_t *len) {
    *len = errors_len;
    return errors ? errors : "";
}

void nodows_clear_errors(void) {
    errors_len = 0;
    if (errors)
        errors[0] = '\0';
}

/*
 * Registers the `name` attribute of every /model/service element as an ID,
 * so that XPath's id('web') is that element in constant time (the template
 * parameter `self` is id($service)). The document's text is unchanged.
 * Returns 0, or -1 if a service name is not unique.
 */
static int index_services(xmlDocPtr doc, const char *name) {
    xmlNodePtr root = xmlDocGetRootElement(doc);
    if (root == NULL || !xmlStrEqual(root->name, (const xmlChar *)"model") || root->ns != NULL)
        return 0;
    for (xmlNodePtr child = root->children; child != NULL; child = child->next) {
        if (child->type != XML_ELEMENT_NODE || child->ns != NULL ||
            !xmlStrEqual(child->name, (const xmlChar *)"service"))
            continue;
        xmlAttrPtr attr = xmlHasNsProp(child, (const xmlChar *)"name", NULL);
        if (attr == NULL || attr->children == NULL || attr->children->content == NULL)
            continue;
        if (xmlAddID(NULL, doc, attr->children->content, attr) == NULL) {
            generic_error(NULL, "%s:%d: service `%s` appears twice\n", name, child->line,
                          (const char *)attr->children->content);
            return -1;
        }
    }
    return 0;
}

/* Parses the effective document (generated by the model crate). */
void *nodows_parse_document(const char *buf, int len, const char *name) {
    xmlDocPtr doc = xmlReadMemory(buf, len, name, NULL, XML_PARSE_NONET | XML_PARSE_NOBLANKS);
    if (doc != NULL && (doc->intSubset != NULL || doc->extSubset != NULL)) {
        generic_error(NULL, "%s:1: a DOCTYPE is not allowed\n", name);
        xmlFreeDoc(doc);
        return NULL;
    }
    if (doc != NULL && index_services(doc, name) != 0) {
        xmlFreeDoc(doc);
        return NULL;
    }
    /* Document order for XPath, once (see nodows_xslt_init). */
    if (doc != NULL)
        xmlXPathOrderDocElems(doc);
    return doc;
}

void nodows_free_document(void *doc) {
    if (doc)
        xmlFreeDoc((xmlDocPtr)doc);
}

void *nodows_compile(const char *path) {
    xsltStylesheetPtr style = xsltParseStylesheetFile((const xmlChar *)path);
    if (style != NULL && style->errors != 0) {
        xsltFreeStylesheet(style);
        return NULL;
    }
    return style;
}

/*
 * Compiles a stylesheet from its bytes, already read (and checked to lie
 * below the allowed directory) by the caller: no second path resolution,
 * no stat or open by libxml2. `url` is the template's canonical path: it is
 * the document's base URI, so xsl:import and xsl:include resolve as they do
 * for xsltParseStylesheetFile and still go through the security prefs and
 * safe_loader. The document is parsed as safe_loader parses it
 * (XSLT_PARSE_OPTIONS without entity substitution and DTD loading, no
 * network; a DOCTYPE is refused), and failures are reported with
 * xsltParseStylesheetFile's message, so the messages do not change.
 */
/* Per thread: one parser context for every template it compiles (a new
 * context per template, with its own dictionary, cost more than parsing a
 * small template); freed by nodows_thread_done. */
static __thread xmlParserCtxtPtr template_parser = NULL;

void nodows_thread_done(void) {
    if (template_parser != NULL) {
        xmlFreeParserCtxt(template_parser);
        template_parser = NULL;
    }
}

void *nodows_compile_memory(const char *buf, int len, const char *url) {
    int options = (XSLT_PARSE_OPTIONS) & ~(XML_PARSE_NOENT | XML_PARSE_DTDLOAD | XML_PARSE_DTDATTR | XML_PARSE_DTDVALID);
    if (template_parser == NULL)
        template_parser = xmlNewParserCtxt();
    if (template_parser == NULL) {
        generic_error(NULL, "%s: out of memory\n", url);
        return NULL;
    }
    xmlDocPtr doc = xmlCtxtReadMemory(template_parser, buf, len, url, NULL, options | XML_PARSE_NONET);
    if (doc != NULL && (doc->intSubset != NULL || doc->extSubset != NULL)) {
        generic_error(NULL, "%s:1: a DOCTYPE is not allowed (DTDs and external entities are refused)\n", url);
        xmlFreeDoc(doc);
        doc = NULL;
    }
    if (doc == NULL) {
        generic_error(NULL, "xsltParseStylesheetFile : cannot parse %s\n", url);
        return NULL;
    }
    xsltStylesheetPtr style = xsltParseStylesheetDoc(doc);
    if (style == NULL) {
        xmlFreeDoc(doc);
        return NULL;
    }
    if (style->errors != 0) {
        xsltFreeStylesheet(style);
        return NULL;
    }
    return style;
}

void nodows_free_stylesheet(void *style) {
    if (style)
        xsltFreeStylesheet((xsltStylesheetPtr)style);
}

/* Whether the stylesheet or one of its imports declares a top-level
 * xsl:param named `name` (includes are merged into their includer). */
static int declares_param(xsltStylesheetPtr style, const char *name) {
    for (xsltStylesheetPtr current = style; current != NULL; current = xsltNextImport(current)) {
        for (xsltStackElemPtr elem = current->variables; elem != NULL; elem = elem->next) {
            if (elem->comp != NULL && elem->comp->type == XSLT_FUNC_PARAM && elem->nameURI == NULL &&
                xmlStrEqual(elem->name, (const xmlChar *)name))
                return 1;
        }
    }
    return 0;
}

/*
 * Applies `style` to `doc` with string parameters (name, value, ..., NULL;
 * values are passed literally). If `self_service` is not NULL and the
 * stylesheet declares a top-level parameter `self`, `self` is the node-set
 * id(self_service): that service's element, found in constant time (see
 * index_services). On success stores the serialized result (honouring
 * xsl:output) in *out (free with nodows_free_output) and returns 0.
 */
int nodows_apply(void *style_ptr, void *doc_ptr, const char **params, const char *self_service,
                 unsigned char **out, int *out_len) {
    xsltStylesheetPtr style = (xsltStylesheetPtr)style_ptr;
    xmlDocPtr doc = (xmlDocPtr)doc_ptr;
    *out = NULL;
    *out_len = 0;
    xsltTransformContextPtr ctxt = xsltNewTransformContext(style, doc);
    if (ctxt == NULL)
        return -1;
    ctxt->debugStatus = XSLT_DEBUG_NONE; /* see nodows_xslt_init */
    xsltSetCtxtSecurityPrefs(prefs, ctxt);
    xsltSetCtxtParseOptions(ctxt, XML_PARSE_NONET | XML_PARSE_NOCDATA);
    xsltSetTransformErrorFunc(ctxt, NULL, generic_error);
    if (xsltQuoteUserParams(ctxt, params) != 0) {
        xsltFreeTransformContext(ctxt);
        return -1;
    }
    /* Evaluated by libxslt once the context node is the document. */
    char self_xpath[512];
    const char *self_params[3] = {NULL, NULL, NULL};
    if (self_service != NULL && declares_param(style, "self")) {
        /* Service names are [A-Za-z0-9._@+-]; refuse anything a literal cannot hold. */
        const char *quote = strchr(self_service, '\'') == NULL ? "'" : "\"";
        int n = snprintf(self_xpath, sizeof self_xpath, "id(%s%s%s)", quote, self_service, quote);
        if (strchr(self_service, quote[0]) != NULL || n < 0 || (size_t)n >= sizeof self_xpath) {
            generic_error(NULL, "service name %s cannot be passed as $self\n", self_service);
            xsltFreeTransformContext(ctxt);
            return -1;
        }
        self_params[0] = "self";
        self_params[1] = self_xpath;
    }
    xmlDocPtr result =
        xsltApplyStylesheetUser(style, doc, self_params[0] ? self_params : NULL, NULL, NULL, ctxt);
    int failed = result == NULL || ctxt->state != XSLT_STATE_OK;
    xsltFreeTransformContext(ctxt);
    if (failed) {
        if (result)
            xmlFreeDoc(result);
        return -1;
    }
    xmlChar *text = NULL;
    int len = 0;
    int rc = xsltSaveResultToString(&text, &len, result, style);
    xmlFreeDoc(result);
    if (rc != 0)
        return -1;
    *out = text;
    *out_len = len;
    return 0;
}

void nodows_free_output(unsigned char *out) {
    if (out)
        xmlFree(out);
}
