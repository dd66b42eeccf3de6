//! Decoding one entry's data as a stream, checking that it ends exactly as
//! its record declares: its compressed bytes all used, its decoded size and
//! CRC-32 the declared ones.

use std::io::{self, BufReader, Read};

use super::PackageError;

/// The compression methods plugin zips may use.
pub(super) const STORED: u16 = 0;
/// Deflate.
pub(super) const DEFLATED: u16 = 8;

/// Bytes handed to `piece` at a time, at most.
const PIECE: usize = 64 * 1024;

/// What an entry claims to be, for [`decode`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Declared {
    /// Compression method number.
    pub method: u16,
    /// Bytes of compressed data.
    pub compressed: u64,
    /// Bytes it decodes to.
    pub size: u64,
    /// CRC-32 of the decoded bytes.
    pub crc32: u32,
}

/// Why [`decode`] stopped.
#[derive(Debug)]
pub(super) enum DecodeError {
    /// The data is not what the record declares (the reason).
    Data(String),
    /// `piece` refused a piece.
    Piece(PackageError),
}

/// Decodes the `declared.compressed` bytes read from `raw`, handing the
/// decoded bytes to `piece` in order, with the size decoded so far
/// (including the piece). Returns the decoded size.
pub(super) fn decode(
    raw: impl Read,
    declared: Declared,
    mut piece: impl FnMut(&[u8], u64) -> Result<(), PackageError>,
) -> Result<u64, DecodeError> {
    let raw = raw.take(declared.compressed);
    let mut crc = crc32fast::Hasher::new();
    let mut size: u64 = 0;
    let mut buf = vec![0u8; PIECE];
    let mut run = |reader: &mut dyn Read| -> Result<(), DecodeError> {
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(DecodeError::Data(e.to_string())),
            };
            size += n as u64;
            crc.update(&buf[..n]);
            piece(&buf[..n], size).map_err(DecodeError::Piece)?;
        }
    };
    let used = match declared.method {
        STORED => {
            let mut raw = raw;
            run(&mut raw)?;
            size
        }
        DEFLATED => {
            let mut inflate =
                flate2::bufread::DeflateDecoder::new(BufReader::with_capacity(PIECE, raw));
            run(&mut inflate)?;
            inflate.total_in()
        }
        other => {
            return Err(DecodeError::Data(format!(
                "compression method {other} is not supported; use deflate or store"
            )))
        }
    };
    if used < declared.compressed && size == declared.size {
        return Err(DecodeError::Data(format!(
            "its compressed data ends after {used} of the {} bytes its header declares",
            declared.compressed
        )));
    }
    if size != declared.size {
        return Err(DecodeError::Data(format!(
            "it decodes to {size} bytes, but its header declares {}",
            declared.size
        )));
    }
    if crc.finalize() != declared.crc32 {
        return Err(DecodeError::Data(
            "CRC-32 mismatch: the data is damaged".to_string(),
        ));
    }
    Ok(size)
}
