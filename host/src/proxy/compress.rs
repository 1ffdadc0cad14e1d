//! Response compression, per route (`compression`): after the response phases, so plugins
//! read and write plain bodies, and the upstream is asked for none (its `Accept-Encoding`
//! is removed) so that nothing is compressed twice.
//!
//! A response is compressed when the client accepts one of the route's encodings, its
//! media type is one of the route's, it is not already encoded, not a range, not marked
//! `no-transform`, and not known to be smaller than `min_bytes`. Then `Content-Length` goes
//! (the body streams), a strong `ETag` becomes weak (the bytes differ; the resource does
//! not), and `Vary: Accept-Encoding` is added to every response of a compressible type,
//! compressed or not, so caches keep the two apart.
//!
//! The body is compressed as it streams: each chunk goes through the encoder, and what the
//! encoder has is flushed whenever the upstream pauses, so a slow stream (server-sent
//! events, long polls) is never held back waiting for more.

use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Frame;

use crate::config::{CompressionSettings, Encoding};
use crate::message::{BoxBody, BoxError};

/// gzip level 5, brotli quality 4, zstd level 3: most of the ratio at a fraction of the
/// highest levels' cost, for bodies compressed on every request.
const GZIP_LEVEL: u32 = 5;
const BROTLI_QUALITY: u32 = 4;
const BROTLI_WINDOW: u32 = 22;
const ZSTD_LEVEL: i32 = 3;

/// The encoding to use for a client that sent `accept` (its `Accept-Encoding` values):
/// the one it gives the highest q-value, ties going to the route's order; `None` for
/// identity.
pub fn negotiate<'a>(
    accept: impl Iterator<Item = &'a HeaderValue>,
    offered: &[Encoding],
) -> Option<Encoding> {
    // q-values in thousandths, per offered encoding; `*` for those not named.
    let mut named = [None::<u16>; 3];
    let mut star = None;
    for value in accept {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let token = parts.next().unwrap_or("").trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .next()
                .map_or(Some(1000), qvalue);
            let Some(q) = q else { continue };
            if token == "*" {
                star = Some(q);
            } else if let Some(i) =
                offered.iter().position(|e| e.name().eq_ignore_ascii_case(token))
            {
                named[i] = Some(q);
            }
        }
    }
    let mut best: Option<(u16, Encoding)> = None;
    for (i, e) in offered.iter().enumerate() {
        let q = named[i].or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(b, _)| q > b) {
            best = Some((q, *e));
        }
    }
    best.map(|(_, e)| e)
}

/// `0`, `0.5`, `1.000` in thousandths; `None` when malformed.
fn qvalue(text: &str) -> Option<u16> {
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac: u16 = format!("{frac:0<3}").parse().ok()?;
    match int {
        "0" => Some(frac),
        "1" if frac == 0 => Some(1000),
        _ => None,
    }
}

/// Whether a response may be compressed at all, whoever asks: its status, encoding,
/// cache directives and media type.
fn compressible(resp: &Response<BoxBody>, settings: &CompressionSettings) -> bool {
    let h = resp.headers();
    let status = resp.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::PARTIAL_CONTENT
        || h.contains_key(header::CONTENT_RANGE)
        || h.get(header::CONTENT_ENCODING).is_some_and(|e| e != "identity")
        || has_token(h, header::CACHE_CONTROL, "no-transform")
    {
        return false;
    }
    let Some(media) = h.get(header::CONTENT_TYPE).and_then(|t| t.to_str().ok()) else {
        return false;
    };
    let media = media.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    settings.content_types.iter().any(|t| match t.strip_suffix("/*") {
        Some(top) => media.split_once('/').is_some_and(|(a, _)| a == top),
        None => *t == media,
    })
}

fn has_token(h: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    h.get_all(name).iter().any(|v| {
        v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Compresses `resp` for a client that sent `accept`, if the route and the response allow.
pub fn response(
    settings: &CompressionSettings,
    method: &Method,
    accept: &[HeaderValue],
    mut resp: Response<BoxBody>,
) -> Response<BoxBody> {
    if !compressible(&resp, settings) {
        return resp;
    }
    let h = resp.headers_mut();
    if !has_token(h, header::VARY, "accept-encoding") && !has_token(h, header::VARY, "*") {
        h.append(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    let small = h
        .get(header::CONTENT_LENGTH)
        .and_then(|l| l.to_str().ok()?.parse::<u64>().ok())
        .is_some_and(|len| len < settings.min_bytes);
    let Some(encoding) = negotiate(accept.iter(), &settings.encodings) else { return resp };
    if small || *method == Method::HEAD {
        return resp;
    }
    h.remove(header::CONTENT_LENGTH);
    h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(encoding.name()));
    if let Some(etag) = h.get(header::ETAG)
        && etag.as_bytes().starts_with(b"\"")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(etag.as_bytes());
        if let Ok(weak) = HeaderValue::from_bytes(&weak) {
            h.insert(header::ETAG, weak);
        }
    }
    resp.map(|body| BoxBody::new(Coded::new(body, Encoder::new(encoding))))
}

/// One of the encoders, writing into a buffer that is drained after every chunk.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Br(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    fn new(encoding: Encoding) -> Self {
        match encoding {
            Encoding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Encoding::Br => Encoder::Br(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                4096,
                BROTLI_QUALITY,
                BROTLI_WINDOW,
            ))),
            Encoding::Zstd => Encoder::Zstd(
                zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
                    .expect("zstd accepts its default level"),
            ),
        }
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Gzip(e) => e,
            Encoder::Br(e) => &mut **e,
            Encoder::Zstd(e) => e,
        }
    }

    /// What the encoder has written so far.
    fn take(&mut self) -> Bytes {
        let out = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Br(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        };
        Bytes::from(std::mem::take(out))
    }

    fn finish(self) -> std::io::Result<Bytes> {
        Ok(Bytes::from(match self {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Br(e) => e.into_inner(),
            Encoder::Zstd(e) => e.finish()?,
        }))
    }
}

impl Coder for Encoder {
    fn feed(&mut self, input: &[u8]) -> Result<Bytes, BoxError> {
        self.writer().write_all(input)?;
        Ok(self.take())
    }

    fn pause(&mut self) -> Result<Bytes, BoxError> {
        self.writer().flush()?;
        Ok(self.take())
    }

    fn finish(self) -> Result<Bytes, BoxError> {
        Ok(Encoder::finish(self)?)
    }
}

/// Something bytes go through as a body streams: an encoder or a decoder.
trait Coder: Send + 'static {
    /// Takes the next input; returns the output it has for now.
    fn feed(&mut self, input: &[u8]) -> Result<Bytes, BoxError>;
    /// The input paused: whatever can be sent now.
    fn pause(&mut self) -> Result<Bytes, BoxError>;
    /// The input ended: the rest.
    fn finish(self) -> Result<Bytes, BoxError>;
}

/// A body passed through a [`Coder`] as it streams. Trailers are dropped (none of the
/// compressible media types carries them, and a compressed request body has none).
struct Coded<C> {
    body: BoxBody,
    coder: Option<C>,
    /// Input went in since the coder's output was last taken.
    fed: bool,
}

impl<C> Coded<C> {
    fn new(body: BoxBody, coder: C) -> Self {
        Self { body, coder: Some(coder), fed: false }
    }
}

impl<C: Coder + Unpin> http_body::Body for Coded<C> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let data = |out: Bytes| Poll::Ready(Some(Ok(Frame::data(out))));
        loop {
            let Some(coder) = this.coder.as_mut() else { return Poll::Ready(None) };
            let out = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(input) = frame.into_data() else { continue };
                    this.fed = true;
                    coder.feed(&input)
                }
                Poll::Ready(Some(Err(e))) => Err(e),
                Poll::Ready(None) => {
                    let coder = this.coder.take().expect("checked above");
                    return match coder.finish() {
                        Ok(out) if out.is_empty() => Poll::Ready(None),
                        Ok(out) => data(out),
                        Err(e) => Poll::Ready(Some(Err(e))),
                    };
                }
                // The input paused: send what is ready so far.
                Poll::Pending if this.fed => {
                    this.fed = false;
                    match coder.pause() {
                        Ok(out) if out.is_empty() => return Poll::Pending,
                        out => out,
                    }
                }
                Poll::Pending => return Poll::Pending,
            };
            match out {
                Ok(out) if out.is_empty() => continue,
                Ok(out) => return data(out),
                Err(e) => {
                    this.coder = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.coder.is_none()
    }
}

pub mod decode;
#[cfg(test)]
mod tests;
