//! Shell-style globs for host names (`web-*`, `h0?`), shared by `collect:`
//! entries and the templates' `values(NAME, GLOB)`.

/// Shell-style glob: `*` any run of characters, `?` any one character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            pi += 1;
            mark = ti;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn globs() {
        assert!(glob_match("web*", "web12"));
        assert!(glob_match("*", ""));
        assert!(glob_match("h?st-*-a", "host-12-a"));
        assert!(!glob_match("web?", "web12"));
        assert!(!glob_match("db*", "web1"));
    }
}
