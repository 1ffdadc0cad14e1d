//! Request decompression, per route (`request_decompression`): a body sent with
//! `Content-Encoding: gzip`, `br` or `zstd` reaches plugins and the upstream decoded, and
//! without `Content-Encoding` and `Content-Length` (it streams).
//!
//! Decoded bytes are counted against the route's `max_bytes` as the decoder writes them
//! (its input fed 4 KiB at a time), so a small body that inflates to gigabytes (a
//! decompression bomb) is stopped at the limit: 413, the client's fault. A body that does
//! not decode is 400. Output is handed on after each read of input; one read can expand to
//! the whole limit first, so a request holds at most `max_bytes` at once (hence the small
//! default). Bounding that per step needs a decoder that can pause mid-input.

use std::io::Write;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderMap};

use crate::config::Encoding;
use crate::message::{BodyWatch, BoxBody, BoxError, ClientBodyError};

/// The one coding a request body is sent with, if it is one Sluice decodes.
pub fn coding(headers: &HeaderMap) -> Option<Encoding> {
    let mut values = headers.get_all(header::CONTENT_ENCODING).iter();
    let value = values.next()?.to_str().ok()?.trim();
    if values.next().is_some() {
        return None;
    }
    match value.to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => Some(Encoding::Gzip),
        "br" => Some(Encoding::Br),
        "zstd" => Some(Encoding::Zstd),
        _ => None,
    }
}

/// Where decoded bytes go: a buffer drained after each input chunk, that refuses to hold
/// more than the limit in all.
struct Capped {
    out: Vec<u8>,
    total: u64,
    max: u64,
}

impl Write for Capped {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.total += buf.len() as u64;
        if self.total > self.max {
            return Err(std::io::Error::other(TooLarge));
        }
        self.out.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("decompressed body over the limit")]
struct TooLarge;

enum Decoder {
    Gzip(Box<flate2::write::GzDecoder<Capped>>),
    Br(Box<brotli::DecompressorWriter<Capped>>),
    Zstd(zstd::stream::write::Decoder<'static, Capped>),
}

impl Decoder {
    fn new(coding: Encoding, max: u64) -> std::io::Result<Self> {
        let sink = Capped { out: Vec::new(), total: 0, max };
        Ok(match coding {
            Encoding::Gzip => Decoder::Gzip(Box::new(flate2::write::GzDecoder::new(sink))),
            Encoding::Br => Decoder::Br(Box::new(brotli::DecompressorWriter::new(sink, 4096))),
            Encoding::Zstd => Decoder::Zstd(zstd::stream::write::Decoder::new(sink)?),
        })
    }

    fn sink(&mut self) -> &mut Capped {
        match self {
            Decoder::Gzip(d) => d.get_mut(),
            Decoder::Br(d) => d.get_mut(),
            Decoder::Zstd(d) => d.get_mut(),
        }
    }

    /// Decodes `input`; what it decodes to so far.
    fn write(&mut self, input: &[u8]) -> std::io::Result<Bytes> {
        // Input in small pieces: each piece's output lands in the capped sink.
        for piece in input.chunks(4096) {
            match self {
                Decoder::Gzip(d) => d.write_all(piece)?,
                Decoder::Br(d) => d.write_all(piece)?,
                Decoder::Zstd(d) => d.write_all(piece)?,
            }
        }
        Ok(Bytes::from(std::mem::take(&mut self.sink().out)))
    }

    fn finish(self) -> std::io::Result<Bytes> {
        let sink = match self {
            Decoder::Gzip(d) => d.finish()?,
            Decoder::Br(d) => {
                d.into_inner().map_err(|_| std::io::Error::other("brotli stream cut short"))?
            }
            Decoder::Zstd(mut d) => {
                d.flush()?;
                d.into_inner()
            }
        };
        Ok(Bytes::from(sink.out))
    }
}

/// A decoder, and where its failures are reported.
struct Decoding {
    decoder: Option<Decoder>,
    watch: Option<Arc<BodyWatch>>,
    max: u64,
}

impl Decoding {
    /// A decoding failure is the client's: told to the body's watch, so that it never
    /// counts against the upstream.
    fn fail(&self, e: std::io::Error) -> BoxError {
        let fault = match e.get_ref().is_some_and(|e| e.is::<TooLarge>()) {
            true => ClientBodyError::TooLarge(self.max),
            false => ClientBodyError::Broken(format!("does not decode: {e}")),
        };
        if let Some(w) = &self.watch {
            w.fail(fault.clone());
        }
        fault.into()
    }
}

impl super::Coder for Decoding {
    fn feed(&mut self, input: &[u8]) -> Result<Bytes, BoxError> {
        let Some(decoder) = self.decoder.as_mut() else { return Ok(Bytes::new()) };
        decoder.write(input).map_err(|e| self.fail(e))
    }

    fn pause(&mut self) -> Result<Bytes, BoxError> {
        // A decoder's output is taken after every input: nothing is held back.
        Ok(Bytes::new())
    }

    fn finish(mut self) -> Result<Bytes, BoxError> {
        let Some(decoder) = self.decoder.take() else { return Ok(Bytes::new()) };
        decoder.finish().map_err(|e| self.fail(e))
    }
}

/// The request body, decoded as it streams.
pub fn decoded(
    body: BoxBody,
    coding: Encoding,
    max: u64,
    watch: Option<Arc<BodyWatch>>,
) -> BoxBody {
    let decoder = Decoder::new(coding, max).ok();
    BoxBody::new(super::Coded::new(body, Decoding { decoder, watch, max }))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    fn body(bytes: Vec<u8>) -> BoxBody {
        BoxBody::new(http_body_util::Full::new(Bytes::from(bytes)).map_err(|n| match n {}))
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[tokio::test]
    async fn a_bomb_stops_at_the_limit_and_the_watch_says_so() {
        let bomb = gzip(&vec![0u8; 50 << 20]);
        assert!(bomb.len() < 100_000);
        let watch = Arc::new(BodyWatch::default());
        let decoded = decoded(body(bomb), Encoding::Gzip, 1 << 20, Some(watch.clone()));
        assert!(decoded.collect().await.is_err());
        assert_eq!(watch.failure(), Some(&ClientBodyError::TooLarge(1 << 20)));
    }

    #[tokio::test]
    async fn each_coding_decodes_and_garbage_is_the_clients_fault() {
        let text = b"hello, decoded world ".repeat(1000);
        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22).write_all(&text).unwrap();
        let zstd = zstd::encode_all(&text[..], 3).unwrap();
        for (coding, data) in
            [(Encoding::Gzip, gzip(&text)), (Encoding::Br, br), (Encoding::Zstd, zstd)]
        {
            let decoded = decoded(body(data), coding, 1 << 20, None);
            assert_eq!(decoded.collect().await.unwrap().to_bytes(), &text[..], "{coding:?}");
        }
        let watch = Arc::new(BodyWatch::default());
        let decoded = decoded(
            body(b"not gzip at all".to_vec()),
            Encoding::Gzip,
            1 << 20,
            Some(watch.clone()),
        );
        assert!(decoded.collect().await.is_err());
        assert!(matches!(watch.failure(), Some(ClientBodyError::Broken(_))));
    }
}
