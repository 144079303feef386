//! keepalived's configuration as a tree of blocks: a keyword, its arguments, and the block it
//! opens (`keyword args {` ... `}`), nested as written.

use super::{
    source::{Line, Token},
    At, ImportError,
};

/// One statement: `keyword args...`, with the block it opens if it opens one.
#[derive(Clone, Debug)]
pub(super) struct Node {
    /// The first word.
    pub keyword: String,
    /// The other words.
    pub args: Vec<String>,
    /// Where it is.
    pub at: At,
    /// What its `{ ... }` holds, when it has one.
    pub block: Option<Vec<Node>>,
}

impl Node {
    /// The statement as written, without its block.
    pub fn text(&self) -> String {
        std::iter::once(self.keyword.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Its block's statements (none when it has no block).
    pub fn children(&self) -> &[Node] {
        self.block.as_deref().unwrap_or(&[])
    }
}

/// The tree of the lines: statements end at the end of their line, at `{` (which opens their
/// block) or at `}`; a `{` alone opens the block of the statement before it.
pub(super) fn build(lines: &[Line]) -> Result<Vec<Node>, ImportError> {
    let mut top: Vec<Node> = Vec::new();
    // Open blocks: their statement and the statements read into them so far.
    let mut open: Vec<(Node, Vec<Node>)> = Vec::new();
    for line in lines {
        let mut stmt: Option<Node> = None;
        for token in &line.tokens {
            let siblings = match open.last_mut() {
                Some((_, children)) => children,
                None => &mut top,
            };
            match token {
                Token::Word(w) => match &mut stmt {
                    Some(s) => s.args.push(w.clone()),
                    None => {
                        stmt = Some(Node {
                            keyword: w.clone(),
                            args: Vec::new(),
                            at: line.at.clone(),
                            block: None,
                        });
                    }
                },
                Token::Open => {
                    let node = match stmt.take() {
                        Some(n) => n,
                        None => match siblings.pop() {
                            Some(prev) if prev.block.is_none() => prev,
                            other => {
                                siblings.extend(other);
                                return Err(line.at.error("`{` with no keyword before it"));
                            }
                        },
                    };
                    open.push((node, Vec::new()));
                }
                Token::Close => {
                    siblings.extend(stmt.take());
                    let Some((mut node, children)) = open.pop() else {
                        return Err(line.at.error("`}` closes no block (one `}` too many?)"));
                    };
                    node.block = Some(children);
                    match open.last_mut() {
                        Some((_, children)) => children.push(node),
                        None => top.push(node),
                    }
                }
            }
        }
        if let Some(s) = stmt {
            match open.last_mut() {
                Some((_, children)) => children.push(s),
                None => top.push(s),
            }
        }
    }
    match open.pop() {
        Some((node, _)) => Err(node.at.error(format!(
            "the block of `{}` is never closed (a `}}` is missing)",
            node.text()
        ))),
        None => Ok(top),
    }
}
