//! Splitting a multi-document YAML stream into its documents, keeping each document's exact
//! text so that documents `inject` leaves alone are written back byte for byte.

/// One document of a YAML stream: the `---` marker line that opened it (if any) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document<'a> {
    /// The marker line (`---`, possibly followed by content or a comment), with its newline;
    /// `None` for a first document written without a marker.
    pub marker: Option<&'a str>,
    /// Everything after the marker line up to the next marker line.
    pub body: &'a str,
}

impl Document<'_> {
    /// The text to hand to a YAML parser (the marker line keeps content such as `--- {a: 1}`).
    pub fn parse_text(&self) -> String {
        let mut s = String::with_capacity(self.body.len() + 4);
        if let Some(m) = self.marker {
            s.push_str(m);
            if !m.ends_with('\n') {
                s.push('\n');
            }
        }
        s.push_str(self.body);
        s
    }

    /// The document exactly as it was read.
    pub fn original(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.marker {
            s.push_str(m);
        }
        s.push_str(self.body);
        s
    }
}

/// True when `line` (without its newline) is a document start marker: `---` alone or followed
/// by whitespace.
fn is_marker(line: &str) -> bool {
    let line = line.trim_end_matches(['\r', '\n']);
    match line.strip_prefix("---") {
        Some(rest) => rest.is_empty() || rest.starts_with([' ', '\t']),
        None => false,
    }
}

/// Splits `text` at document start markers. A leading part before the first marker is a
/// document of its own (often only comments) and is kept as such.
pub fn split(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut marker: Option<&str> = None;
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        if is_marker(line) {
            if marker.is_some() || pos > 0 {
                docs.push(Document {
                    marker,
                    body: &text[start..pos],
                });
            }
            marker = Some(line);
            start = pos + line.len();
        }
        pos += line.len();
    }
    if marker.is_some() || start < text.len() {
        docs.push(Document {
            marker,
            body: &text[start..],
        });
    }
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_every_byte() {
        let inputs = [
            "",
            "a: 1\n",
            "---\na: 1\n",
            "# head\n---\na: 1\n---\nb: 2\n",
            "a: 1\n--- # second\nb: 2\n---\n",
            "a: |\n  ---not a marker\n  x\n---\nb: 2",
            "---{not: marker}\n",
        ];
        for input in inputs {
            let docs = split(input);
            let joined: String = docs.iter().map(Document::original).collect();
            assert_eq!(joined, input, "{docs:?}");
        }
        assert_eq!(split("# head\n---\na: 1\n---\nb: 2\n").len(), 3);
        assert_eq!(split("a: |\n  ---x\n---\nb: 2").len(), 2);
        assert_eq!(split("---{not: marker}\n").len(), 1);
        assert_eq!(split("").len(), 0);
    }

    #[test]
    fn parse_text_includes_marker_content() {
        let docs = split("--- {a: 1}\n");
        assert_eq!(docs.len(), 1);
        assert_eq!(docs[0].parse_text(), "--- {a: 1}\n");
    }
}
