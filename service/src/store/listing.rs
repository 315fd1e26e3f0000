//! Listings of the raw files: a page for the API, and every name for the reconciliation
//! scan.

use anyhow::Result;
use aws_sdk_s3::primitives::DateTimeFormat;
use serde::Serialize;

use super::Store;
use crate::names::{self, raw_key};
use aws_clients::AwsResultExt;

/// A raw file as a bucket listing names it.
pub struct RawName {
    pub name: String,
    pub last_modified: Option<std::time::SystemTime>,
}

/// One page of raw files.
pub struct Listing {
    pub files: Vec<ListedFile>,
    /// The last name of the page, when more follow.
    pub last: Option<String>,
}

#[derive(Serialize)]
pub struct ListedFile {
    pub name: String,
    pub size: Option<i64>,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Store {
    /// One page of raw files whose names start with `prefix`, after the name `after`.
    pub async fn list(&self, prefix: &str, limit: i32, after: Option<&str>) -> Result<Listing> {
        let page = self
            .s3
            .list_objects_v2()
            .bucket(self.initial())
            .prefix(raw_key(prefix))
            .max_keys(limit)
            .set_start_after(after.map(raw_key))
            .send()
            .await
            .aws_context("s3:ListObjectsV2")?;
        let files = page
            .contents()
            .iter()
            .filter_map(|object| {
                Some(ListedFile {
                    name: object.key()?.strip_prefix(names::RAW_PREFIX)?.to_string(),
                    size: object.size(),
                    etag: object.e_tag().map(|e| e.trim_matches('"').to_string()),
                    last_modified: object
                        .last_modified()
                        .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()),
                })
            })
            .collect::<Vec<ListedFile>>();
        let more = page.is_truncated().unwrap_or(false);
        Ok(Listing {
            last: files.last().filter(|_| more).map(|f| f.name.clone()),
            files,
        })
    }

    /// The names of all raw files with their last modification, a page at a time: the page
    /// after `cursor`, and the cursor of the next one.
    pub async fn raw_names(
        &self,
        cursor: Option<String>,
    ) -> Result<(Vec<RawName>, Option<String>)> {
        let page = self
            .s3
            .list_objects_v2()
            .bucket(self.initial())
            .prefix(names::RAW_PREFIX)
            .set_continuation_token(cursor)
            .send()
            .await
            .aws_context(format!("s3:ListObjectsV2 {}", self.initial()))?;
        let names = page
            .contents()
            .iter()
            .filter_map(|o| {
                Some(RawName {
                    name: o.key()?.strip_prefix(names::RAW_PREFIX)?.to_string(),
                    last_modified: o
                        .last_modified()
                        .and_then(|t| std::time::SystemTime::try_from(*t).ok()),
                })
            })
            .collect();
        Ok((names, page.next_continuation_token().map(str::to_string)))
    }
}
