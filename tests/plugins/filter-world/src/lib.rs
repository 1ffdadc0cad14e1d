//! A plugin of the `plugin` world of the current `wit/` (export `filter`, hooks given the
//! messages as borrowed resource handles), built without the SDK. Every SDK now builds for
//! `handler-plugin`, but components built for `plugin` keep loading, and the host reads
//! their header calls in place through separate registrations: this plugin makes each of
//! them on the request and the response, and reports what it read in headers.
//!
//! Request: `x-filter-one` is `header("x-a")`; `x-filter-batch` is `headers(["x-a",
//! "x-b", "x-missing"])` joined with `|` (`-` for absent); `x-filter-set` is set to `1`
//! then appended `2`; `x-drop` and `x-drop2` are removed (one by `edit-headers`, one by
//! `remove-header`); an edit of `content-length` must be refused with its index.
//! Response: `x-filter-out` by `edit-headers`, `x-filter-type` copies `content-type`.

wit_bindgen::generate!({ path: "../../../wit", world: "plugin" });

use exports::sluice::plugin::filter::{Action, Guest, Hooks};
use sluice::plugin::http::{FieldError, HeaderEdit, Request, Response};

struct Plugin;

fn set(name: &str, value: &str) -> HeaderEdit {
    HeaderEdit::Set((name.to_owned(), value.to_owned()))
}

impl Guest for Plugin {
    fn init(_config: String) -> Result<Hooks, String> {
        Ok(Hooks::ON_REQUEST | Hooks::ON_RESPONSE)
    }

    fn on_request(req: &Request) -> Action {
        let one = req.header("x-a").unwrap_or_default();
        let names = ["x-a", "x-b", "x-missing"].map(str::to_owned);
        let batch: Vec<String> =
            req.headers(&names).into_iter().map(|v| v.unwrap_or_else(|| "-".into())).collect();
        // A batch with a header the host owns is refused whole, naming the edit.
        let refused = match req.edit_headers(&[set("x-never", "1"), set("content-length", "1")]) {
            Err(e) if e.index == 1 && matches!(e.error, FieldError::Forbidden) => "refused",
            _ => "accepted",
        };
        let edits = [
            set("x-filter-one", &one),
            set("x-filter-batch", &batch.join("|")),
            set("x-filter-refused", refused),
            HeaderEdit::Remove("x-drop".into()),
        ];
        let ok = req.edit_headers(&edits).is_ok()
            && req.set_header("x-filter-set", "1").is_ok()
            && req.append_header("x-filter-set", "2").is_ok()
            && req.remove_header("x-drop2").is_ok();
        if !ok {
            let _ = req.set_header("x-filter-failed", "1");
        }
        Action::Continue
    }

    fn on_response(_req: &Request, resp: &Response) {
        let kind = resp.header("content-type").unwrap_or_default();
        let _ = resp.edit_headers(&[set("x-filter-out", "ok")]);
        let _ = resp.set_header("x-filter-type", &kind);
    }
}

export!(Plugin);
