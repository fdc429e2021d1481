//! What a credential looks like, wherever it hides: a JWT or JWE in a header value or a query
//! parameter that is not the one iotgate verifies.
//!
//! ```text
//! bytes ──has_jwt──▶ a dot-joined base64url run whose first part decodes to a JSON object?
//! ```

/// Whether `text` holds a JWT or JWE: runs of base64url (padding allowed) joined by dots,
/// the first of which decodes to a JSON object — whatever whitespace precedes its `{`
/// (`eyJ…`, `eyAi…`, `ewog…` are all headers a lenient upstream accepts).
pub(crate) fn has_jwt(text: &[u8]) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    // a base64url run from `from`, with its `=` padding
    let part = |from: usize| {
        let run = text[from..].iter().take_while(|b| b64(**b)).count();
        run + text[from + run..]
            .iter()
            .take_while(|b| **b == b'=')
            .count()
    };
    // a header at `at`: long enough, then `.claims.`, decoding to a JSON object
    let jwt_at = |at: usize| {
        let header = part(at);
        let next = at + header;
        let claims = match text.get(next) {
            Some(b'.') => part(next + 1),
            _ => 0,
        };
        header >= 8
            && claims >= 2
            && text.get(next + 1 + claims) == Some(&b'.')
            && decodes_to_object(&LENIENT, &text[at..next])
    };
    let mut at = 0;
    while at < text.len() {
        let run = text[at..].iter().take_while(|b| b64(**b)).count();
        if run == 0 {
            at += 1;
            continue;
        }
        // the run itself, or a JSON header (`e…`) that a prefix hides (`id_eyJ…`)
        let starts = std::iter::once(at).chain((at + 1..at + run).filter(|i| text[*i] == b'e'));
        if starts.take(16).any(jwt_at) {
            return true;
        }
        at += run;
    }
    false
}

/// Whether base64url `part` decodes to text that, past whitespace, opens a JSON object.
fn decodes_to_object(engine: &impl base64::Engine, part: &[u8]) -> bool {
    engine
        .decode(part)
        .is_ok_and(|raw| raw.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{'))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn tokens_are_found_in_every_spelling_and_nothing_else_is() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c3IiOiJvbGl2aWEifQ.c2ln";
        let found = [
            jwt.to_string(),
            format!("Bearer {jwt}"),
            format!("authorization={jwt}; theme=dark"),
            format!("id_{jwt}"),
            // whitespace before the header's `{`, and padding
            "eyAiYWxnIjoiSFMyNTYifQ.eyJ1c3IiOiJvbGl2aWEifQ.c2ln".to_string(),
            "x ewogICJhbGciOiJIUzI1NiJ9.e30.s".to_string(),
            "eyJhbGciOiJIUzI1NiJ9IA==.e30=.s".to_string(),
        ];
        for text in &found {
            assert!(has_jwt(text.as_bytes()), "{text}");
        }
        let not = [
            "eyJ",
            "eyJhbGciOiJIUzI1NiJ9",
            "eyJhbGciOiJIUzI1NiJ9.x",
            "eyJhbGciOiJIUzI1NiJ9..sig",
            "thinger.v1",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
            "www.example.com.au",
            "1.2.3.4",
            "dGhlIHNhbXBsZSBub25jZQ==",
        ];
        for text in not {
            assert!(!has_jwt(text.as_bytes()), "{text}");
        }
    }

    proptest! {
        #[test]
        fn any_bytes_are_judged_without_panicking(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = has_jwt(&bytes);
        }
    }
}
