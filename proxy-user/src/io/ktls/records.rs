//! [`RecordCursor`]: where a TLS byte stream stands relative to its record boundaries, so
//! a reader can stop exactly at the end of a record. Handing a session to the kernel
//! needs that: the kernel decrypts from the socket's receive queue, so every byte rustls
//! has read must form whole records it has processed, and nothing past them may have been
//! read into userspace. Pure: it only sees the bytes it is told were read.

/// A TLS record header: type (1), legacy version (2), length (2).
const HEADER: usize = 5;

/// Position within the current record of a TLS byte stream.
#[derive(Debug, Default, Clone)]
pub(crate) struct RecordCursor {
    header: [u8; HEADER],
    /// Header bytes seen of the current record (0 at a boundary or inside its body).
    got: usize,
    /// Body bytes still to come of the current record.
    body_left: usize,
}

impl RecordCursor {
    /// How many bytes the next read may take without passing the current record's end
    /// (the rest of a header, or the rest of a body); never 0.
    pub(crate) fn allowance(&self) -> usize {
        if self.body_left > 0 {
            self.body_left
        } else {
            HEADER - self.got
        }
    }

    /// Whether every byte seen so far forms whole records.
    pub(crate) fn at_boundary(&self) -> bool {
        self.got == 0 && self.body_left == 0
    }

    /// Accounts for `bytes`, read next from the stream (any length: a longer slice is
    /// walked record by record).
    pub(crate) fn advance(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER - self.got).min(bytes.len());
            self.header[self.got..self.got + n].copy_from_slice(&bytes[..n]);
            self.got += n;
            bytes = &bytes[n..];
            if self.got == HEADER {
                self.got = 0;
                self.body_left = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three records (bodies of 3, 0 and 300 bytes) and where each ends.
    fn stream() -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        for (kind, len) in [(22u8, 3usize), (20, 0), (23, 300)] {
            bytes.push(kind);
            bytes.extend_from_slice(&[3, 3]);
            bytes.extend_from_slice(&(len as u16).to_be_bytes());
            bytes.extend(std::iter::repeat_n(0xab, len));
            ends.push(bytes.len());
        }
        (bytes, ends)
    }

    #[test]
    fn every_prefix_is_at_a_boundary_exactly_at_record_ends() {
        let (bytes, ends) = stream();
        for cut in 0..=bytes.len() {
            let mut c = RecordCursor::default();
            c.advance(&bytes[..cut]);
            let expected = cut == 0 || ends.contains(&cut);
            assert_eq!(c.at_boundary(), expected, "after {cut} bytes");
            // The allowance never reaches past the record the cut is in.
            let next_end = ends.iter().copied().find(|&e| e > cut);
            if let Some(end) = next_end {
                assert!(cut + c.allowance() <= end, "after {cut}: {}", c.allowance());
            }
        }
    }

    #[test]
    fn reading_by_allowance_stops_at_each_record_end_and_split_reads_agree() {
        let (bytes, ends) = stream();
        // A reader that takes at most the allowance (and at most 7 bytes per read) lands
        // on every record end.
        let mut c = RecordCursor::default();
        let (mut at, mut boundaries) = (0, Vec::new());
        while at < bytes.len() {
            let n = c.allowance().min(7).min(bytes.len() - at);
            c.advance(&bytes[at..at + n]);
            at += n;
            if c.at_boundary() {
                boundaries.push(at);
            }
        }
        assert_eq!(boundaries, ends);
        // One slice or byte by byte: the same position.
        for cut in 0..=bytes.len() {
            let (mut whole, mut bytewise) = (RecordCursor::default(), RecordCursor::default());
            whole.advance(&bytes[..cut]);
            for b in &bytes[..cut] {
                bytewise.advance(std::slice::from_ref(b));
            }
            assert_eq!(whole.allowance(), bytewise.allowance(), "after {cut}");
            assert_eq!(whole.at_boundary(), bytewise.at_boundary());
        }
    }
}
