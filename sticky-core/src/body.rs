//! Row 6 of the decision table: whether a body can be replayed (Fly's
//! proxy replays at most 1 MB, and only a body of known length).

use std::ops::ControlFlow;

use crate::decision::BodyProblem;
use crate::engine::{ROUTING, RoutingSeen, Sticky};
use crate::target;
use crate::view::RequestView;

impl Sticky {
    /// Row 6: the declared length of a body that can be replayed (0 for
    /// none), or why it cannot.
    pub(crate) fn body_length<'a, V: RequestView>(
        &self,
        req: &'a V,
        seen: &RoutingSeen<'a>,
    ) -> Result<u64, BodyProblem> {
        let unknown = if self.inner.replay_unknown_length {
            Ok(0)
        } else {
            Err(BodyProblem::UnknownLength)
        };
        if seen.has(req, RoutingSeen::slot(4), ROUTING[4]) {
            return unknown;
        }
        let mut length: Option<u64> = None;
        let mut malformed = false;
        seen.each(req, RoutingSeen::slot(5), ROUTING[5], &mut |v| {
            for part in v.split(|&b| b == b',') {
                match parse_length(target::header_value(part)) {
                    Some(n) if length.is_none_or(|l| l == n) => length = Some(n),
                    _ => {
                        malformed = true;
                        return ControlFlow::Break(());
                    }
                }
            }
            ControlFlow::Continue(())
        });
        if malformed {
            return Err(BodyProblem::UnknownLength);
        }
        match length {
            Some(n) if n > self.inner.body_limit => Err(BodyProblem::TooLarge),
            Some(n) => Ok(n),
            None if matches!(req.method(), "POST" | "PUT" | "PATCH") => unknown,
            None => Ok(0),
        }
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}
