//! Aligned text tables for people (`ferry pull`, `ferry spool list`);
//! scripts read the `--json` form of the same rows. Cells are printed on
//! one line with control characters escaped.

/// `header` and `rows` as lines of columns two spaces apart; the last
/// column is not padded, so long keys do not push trailing blanks.
pub fn render<S: AsRef<str>>(header: &[&str], rows: &[Vec<S>]) -> String {
    let cols = header.len();
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| crate::printable::one_line(c.as_ref()))
                .collect()
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        for (i, (c, w)) in cells.zip(&widths).enumerate() {
            out.push_str(c);
            if i + 1 < cols {
                let pad = w.saturating_sub(c.chars().count()) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for r in &rows {
        line(&mut r.iter().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_and_the_last_is_not_padded() {
        let t = render(
            &["ID", "STATE", "KEY"],
            &[vec!["a1", "waiting", "x.tar.gz"], vec!["b", "parked", "ü"]],
        );
        assert_eq!(
            t,
            "ID  STATE    KEY\na1  waiting  x.tar.gz\nb   parked   ü\n"
        );
    }
}
