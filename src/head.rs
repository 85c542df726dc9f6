//! The request head kept while a call may need it again: for a next attempt, or for a dead
//! letter.
//!
//! A call's first attempt sends the caller's own head, moved; what is kept is a copy made
//! without a header map: the method, the URI and the version, the extensions, and each header
//! name and value (reference-counted, so copying one copies no bytes), the first two in place
//! and the rest in one vector. A later attempt, or a letter, builds a head from it again. That
//! costs what `Parts::clone` costs, but only on those rare paths; the happy path pays for the
//! copy of the pairs and nothing else, where a `Parts::clone` allocates and frees a header
//! map's two tables on every call.

use http::request::Parts;
use http::{Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};

/// One header of the copy.
type Pair = (HeaderName, HeaderValue);

/// The headers of a copy: up to two in place, more in one vector.
#[derive(Clone, Debug)]
enum Headers {
    Few([Option<Pair>; 2]),
    Many(Vec<Pair>),
}

/// A copy of a request head. See the [module docs](self).
#[derive(Clone, Debug)]
pub(crate) struct HeadCopy {
    method: Method,
    uri: Uri,
    version: Version,
    headers: Headers,
    extensions: Extensions,
}

impl HeadCopy {
    /// A copy of `parts`.
    pub(crate) fn of(parts: &Parts) -> Self {
        let map = &parts.headers;
        let headers = if map.len() <= 2 {
            let mut pairs = map.iter().map(|(n, v)| Some((n.clone(), v.clone())));
            Headers::Few([pairs.next().flatten(), pairs.next().flatten()])
        } else {
            Headers::Many(map.iter().map(|(n, v)| (n.clone(), v.clone())).collect())
        };
        HeadCopy {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers,
            extensions: parts.extensions.clone(),
        }
    }

    /// The request URI.
    pub(crate) fn uri(&self) -> &Uri {
        &self.uri
    }

    /// The request method.
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }

    /// Whether the copy has a header of this name.
    pub(crate) fn has_header(&self, name: &HeaderName) -> bool {
        match &self.headers {
            Headers::Few(pairs) => pairs.iter().flatten().any(|(n, _)| n == name),
            Headers::Many(pairs) => pairs.iter().any(|(n, _)| n == name),
        }
    }

    /// A head with the copy's method, URI, version, headers and extensions.
    pub(crate) fn to_parts(&self) -> Parts {
        let (mut parts, ()) = Request::new(()).into_parts();
        parts.method = self.method.clone();
        parts.uri = self.uri.clone();
        parts.version = self.version;
        parts.extensions = self.extensions.clone();
        let pairs: &[Option<Pair>] = match &self.headers {
            Headers::Few(pairs) => pairs,
            Headers::Many(_) => &[],
        };
        let mut headers = HeaderMap::with_capacity(self.len());
        for (name, value) in pairs.iter().flatten() {
            headers.append(name.clone(), value.clone());
        }
        if let Headers::Many(pairs) = &self.headers {
            for (name, value) in pairs {
                headers.append(name.clone(), value.clone());
            }
        }
        parts.headers = headers;
        parts
    }

    fn len(&self) -> usize {
        match &self.headers {
            Headers::Few(pairs) => pairs.iter().flatten().count(),
            Headers::Many(pairs) => pairs.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&'static str, &str)]) -> Parts {
        let mut request = Request::post("https://api.example.com/v1/items?x=1")
            .version(Version::HTTP_2)
            .body(())
            .unwrap();
        for (name, value) in headers {
            let mut value = HeaderValue::from_str(value).unwrap();
            value.set_sensitive(*name == "authorization");
            request
                .headers_mut()
                .append(HeaderName::from_static(name), value);
        }
        request.extensions_mut().insert(7u32);
        request.into_parts().0
    }

    fn same(a: &Parts, b: &Parts) {
        assert_eq!(a.method, b.method);
        assert_eq!(a.uri, b.uri);
        assert_eq!(a.version, b.version);
        assert_eq!(a.headers, b.headers);
        let pairs = |h: &HeaderMap| {
            h.iter()
                .map(|(n, v)| (n.clone(), v.clone(), v.is_sensitive()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&a.headers),
            pairs(&b.headers),
            "order and sensitivity"
        );
        assert_eq!(a.extensions.get::<u32>(), b.extensions.get::<u32>());
    }

    #[test]
    fn a_copy_gives_back_the_same_head_with_few_or_many_headers() {
        for headers in [
            &[][..],
            &[("accept", "application/json")][..],
            &[("accept", "a"), ("authorization", "Bearer secret")][..],
            &[
                ("accept", "a"),
                ("x-trace", "1"),
                ("accept", "b"),
                ("authorization", "Bearer secret"),
                ("x-trace", "2"),
            ][..],
        ] {
            let original = head(headers);
            let copy = HeadCopy::of(&original);
            same(&original, &copy.to_parts());
            same(&original, &copy.to_parts());
            assert_eq!(copy.uri(), &original.uri);
        }
    }

    #[test]
    fn repeated_names_keep_their_values_in_order() {
        let original = head(&[("accept", "a"), ("accept", "b")]);
        let rebuilt = HeadCopy::of(&original).to_parts();
        let values: Vec<_> = rebuilt.headers.get_all("accept").iter().collect();
        assert_eq!(values, ["a", "b"]);
    }
}
