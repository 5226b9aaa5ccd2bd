//! The DATA decoder (sans-IO) on arbitrary input, fed whole and in pieces
//! of fuzzer-chosen sizes: both must agree on the text, the fault, where
//! the message ended and how much input it used. Properties checked: the
//! end is only ever `CRLF . CRLF`, output is never larger than the input,
//! a message without a fault contains no bare CR or LF.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tlsgate::smtp::command::{DataDecoder, DataFault};

/// Feeds `input` in pieces cut at `cuts`; returns text, fault, input used,
/// done.
fn decode(input: &[u8], cuts: &[u8], max: u64) -> (Vec<u8>, Option<DataFault>, usize, bool) {
    let mut d = DataDecoder::new(max);
    let mut out = Vec::new();
    let mut used = 0;
    let mut cut = cuts.iter().cycle();
    while used < input.len() {
        let step = usize::from(*cut.next().unwrap_or(&0)).max(1);
        let end = (used + step).min(input.len());
        let piece = &input[used..end];
        let fed = d.feed(piece, &mut out);
        assert!(fed.consumed <= piece.len());
        used += fed.consumed;
        if fed.done {
            // Once done, the decoder takes nothing more.
            let after = d.feed(&input[used..], &mut out);
            assert_eq!((after.consumed, after.done), (0, true));
            return (out, d.fault(), used, true);
        }
        assert_eq!(fed.consumed, piece.len());
    }
    (out, d.fault(), used, false)
}

fuzz_target!(|data: &[u8]| {
    // First byte: size limit; next up to 8 bytes: piece sizes; rest: input.
    let Some((&lim, rest)) = data.split_first() else {
        return;
    };
    let ncuts = rest.len().min(8);
    let (cuts, input) = rest.split_at(ncuts);
    let max = if lim == 0 {
        u64::MAX
    } else {
        u64::from(lim) * 16
    };

    let mut d = DataDecoder::new(max);
    let mut whole = Vec::new();
    let fed = d.feed(input, &mut whole);
    let one = (whole, d.fault(), fed.consumed, fed.done);
    let pieces = decode(input, cuts, max);
    assert_eq!(one, pieces);

    let (text, fault, used, done) = one;
    assert!(text.len() <= used);
    if done {
        assert!(used >= 3 && input[..used].ends_with(b".\r\n"));
        assert!(used == 3 || input[..used].ends_with(b"\r\n.\r\n"));
    } else {
        assert_eq!(used, input.len());
    }
    if fault.is_none() {
        assert!(text.len() as u64 <= max);
        // Every CR is followed by LF and every LF preceded by CR.
        for (i, &b) in text.iter().enumerate() {
            if b == b'\r' {
                assert_eq!(text.get(i + 1), Some(&b'\n'));
            }
            if b == b'\n' {
                assert!(i > 0 && text[i - 1] == b'\r');
            }
        }
    }
});
