//! A minimal owned request for tests: any bytes in any header.
#![allow(dead_code, unreachable_pub)]

use std::ops::ControlFlow;

use sticky_core::RequestView;

pub const S: &str = "148ed599c14189";
pub const T: &str = "90801679a10038";

#[derive(Clone, Debug, Default)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Req {
    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn new(method: &str, path: &str) -> Self {
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path.to_owned(), None),
        };
        Self {
            method: method.to_owned(),
            path,
            query,
            headers: Vec::new(),
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_owned(), value.as_ref().to_vec()));
        self
    }

    pub fn cookie(self, value: &str) -> Self {
        self.header("Cookie", format!("fly-machine-id={value}"))
    }
}

impl RequestView for Req {
    fn method(&self) -> &str {
        &self.method
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
    fn header_values<'a>(&'a self, name: &str, each: &mut dyn FnMut(&'a [u8]) -> ControlFlow<()>) {
        for (n, v) in &self.headers {
            if n.eq_ignore_ascii_case(name) && each(v).is_break() {
                break;
            }
        }
    }
}
