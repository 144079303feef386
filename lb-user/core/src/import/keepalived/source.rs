//! keepalived's configuration text as lines of tokens: its preprocessor (`include` with glob
//! patterns, `@ID` conditional lines, `$NAME=value` definitions), its comments (`#`, `!`) and
//! its words (quoted strings, braces).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{At, ImportError, Options};
use crate::import::Files;

/// How deep includes may nest: keepalived's own limit is about this; deeper is a loop.
const MAX_INCLUDE_DEPTH: usize = 20;

/// One token of a line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Token {
    /// A word, quotes removed.
    Word(String),
    /// `{`
    Open,
    /// `}`
    Close,
}

/// One line that has tokens, with where it was.
#[derive(Clone, Debug)]
pub(super) struct Line {
    /// File and line.
    pub at: At,
    /// Its tokens (never empty).
    pub tokens: Vec<Token>,
}

/// The configuration's lines, includes expanded, and what the preprocessor did that the
/// reader of the converted file should know.
#[derive(Debug, Default)]
pub(super) struct Source {
    /// Every line with tokens, in keepalived's reading order.
    pub lines: Vec<Line>,
    /// Notes for the converted file's header.
    pub notes: Vec<String>,
}

/// Reads `path` and what it includes.
pub(super) fn read(
    files: &dyn Files,
    path: &Path,
    options: &Options,
) -> Result<Source, ImportError> {
    let text = files.read(path).map_err(|source| ImportError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let mut reader = Reader {
        files,
        options,
        vars: HashMap::new(),
        source: Source::default(),
        dropped: Vec::new(),
        expanded: false,
    };
    reader.file(path, &text, 0)?;
    let mut source = reader.source;
    if !reader.dropped.is_empty() {
        let which = match &options.config_id {
            Some(id) => format!("with config-id `{id}`"),
            None => "without a config-id (keepalived -i ID; --config-id here)".to_string(),
        };
        source.notes.push(format!(
            "Conditional lines (`@ID`) were read as keepalived reads them {which}: dropped at {}.",
            reader.dropped.join(", ")
        ));
    }
    if reader.expanded {
        source
            .notes
            .push("`$NAME=value` definitions were expanded where their names are used.".into());
    }
    Ok(source)
}

struct Reader<'a> {
    files: &'a dyn Files,
    options: &'a Options,
    vars: HashMap<String, String>,
    source: Source,
    /// `FILE:LINE` of the conditional lines left out.
    dropped: Vec<String>,
    /// Whether a `$NAME` was replaced.
    expanded: bool,
}

impl Reader<'_> {
    fn file(&mut self, path: &Path, text: &str, depth: usize) -> Result<(), ImportError> {
        let name: std::rc::Rc<str> = path.display().to_string().into();
        for (i, raw) in text.lines().enumerate() {
            let at = At {
                file: name.clone(),
                line: i + 1,
            };
            let mut line = raw.trim_start();
            // `@ID rest`: the rest is read only when keepalived runs with `-i ID`; `@^ID rest`
            // only when it does not.
            if let Some(cond) = line.strip_prefix('@') {
                let (id, rest) = cond.split_once(char::is_whitespace).unwrap_or((cond, ""));
                let (negated, id) = match id.strip_prefix('^') {
                    Some(id) => (true, id),
                    None => (false, id),
                };
                let matches = self.options.config_id.as_deref() == Some(id);
                if matches == negated {
                    self.dropped.push(at.to_string());
                    continue;
                }
                line = rest.trim_start();
            }
            if let Some((name, value)) = definition(line) {
                let value = self.expand(value.trim());
                self.vars.insert(name.to_string(), value);
                continue;
            }
            let line = self.expand(line);
            if line.starts_with("~SEQ") {
                return Err(at.error(
                    "keepalived's ~SEQ(...) line generator is not expanded here: write its lines out",
                ));
            }
            let tokens = tokenize(&line).map_err(|reason| at.error(reason))?;
            match tokens.first() {
                None => {}
                Some(Token::Word(w)) if w == "include" => {
                    self.include(path, &at, &tokens[1..], depth)?;
                }
                Some(_) => self.source.lines.push(Line { at, tokens }),
            }
        }
        Ok(())
    }

    /// `include PATTERN`: every file the glob pattern matches, relative to the including
    /// file's directory, in name order.
    fn include(
        &mut self,
        from: &Path,
        at: &At,
        args: &[Token],
        depth: usize,
    ) -> Result<(), ImportError> {
        let [Token::Word(pattern)] = args else {
            return Err(at.error("`include` takes one file name or glob pattern"));
        };
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(at.error(format!(
                "`include {pattern}`: includes nested more than {MAX_INCLUDE_DEPTH} deep (a file including itself?)"
            )));
        }
        let full: PathBuf = match from.parent() {
            Some(dir) if Path::new(pattern).is_relative() => dir.join(pattern),
            _ => PathBuf::from(pattern),
        };
        let full = full.display().to_string();
        let paths = self
            .files
            .glob(&full)
            .map_err(|e| at.error(format!("`include {pattern}`: {e}")))?;
        if paths.is_empty() {
            // keepalived goes on without it (it logs a warning).
            self.source.notes.push(format!(
                "`include {pattern}` ({at}) matched no file, as keepalived would find none."
            ));
        }
        for p in paths {
            let text = self
                .files
                .read(&p)
                .map_err(|e| at.error(format!("`include {pattern}`: {}: {e}", p.display())))?;
            self.file(&p, &text, depth + 1)?;
        }
        Ok(())
    }

    /// The line with `$NAME` and `${NAME}` replaced by their definitions (an undefined name is
    /// left as written, as keepalived leaves it).
    fn expand(&mut self, line: &str) -> String {
        if !line.contains('$') || self.vars.is_empty() {
            return line.to_string();
        }
        let mut out = String::new();
        let mut rest = line;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            let (name, len) = if let Some(braced) = after.strip_prefix('{') {
                match braced.find('}') {
                    Some(end) => (&braced[..end], end + 2),
                    None => ("", 0),
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                (&after[..end], end)
            };
            match self.vars.get(name) {
                Some(value) if !name.is_empty() => {
                    out.push_str(value);
                    self.expanded = true;
                    rest = &after[len..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }
}

/// `$NAME=value`: a definition, its name and value.
fn definition(line: &str) -> Option<(&str, &str)> {
    let (name, value) = line.strip_prefix('$')?.split_once('=')?;
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    valid.then_some((name, value))
}

/// The tokens of one line: words separated by blanks, `"quoted strings"` as one word, `{` and
/// `}` on their own; a word starting with `#` or `!` starts a comment to the end of the line.
pub(super) fn tokenize(line: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut started = false;
    let mut chars = line.chars();
    let flush = |out: &mut Vec<Token>, word: &mut String, started: &mut bool| {
        if *started {
            out.push(Token::Word(std::mem::take(word)));
            *started = false;
        }
    };
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => flush(&mut out, &mut word, &mut started),
            '{' | '}' => {
                flush(&mut out, &mut word, &mut started);
                out.push(if c == '{' { Token::Open } else { Token::Close });
            }
            '#' | '!' if !started => break,
            '"' => {
                started = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => word.push(c),
                        None => {
                            return Err("a quoted string is not closed (a `\"` is missing)".into())
                        }
                    }
                }
            }
            c => {
                started = true;
                word.push(c);
            }
        }
    }
    flush(&mut out, &mut word, &mut started);
    Ok(out)
}
