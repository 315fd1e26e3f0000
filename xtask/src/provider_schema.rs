//! The AWS provider's schema, offline: `terraform validate` needs the provider, which cannot
//! be downloaded on machines without the Terraform registry. The npm package
//! `@cdktf/provider-aws` is generated from hashicorp/aws and describes every resource and data
//! source in its `.jsii` file: the arguments of each (camelCase there), whether each is
//! required, and which are nested blocks. `cargo xtask test` downloads the package once from
//! the npm registry (checked against its pinned SHA-512), reduces the 131 MB `.jsii` to the
//! few megabytes a check needs, and caches both under `target/provider-schema/`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail, ensure};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha512};

use crate::context::{Context, block_on};

/// @cdktf/provider-aws 21.22.1 is generated from hashicorp/aws 6.25.0 (versions.tf: ~> 6.0).
const PACKAGE_URL: &str =
    "https://registry.npmjs.org/@cdktf/provider-aws/-/provider-aws-21.22.1.tgz";
/// The registry's `dist.integrity` of that tarball (sha512, here in hex).
const PACKAGE_SHA512: &str = "06e48779a40550bf65df7a41cc83114fb71343af4033698bb628e3b5e08f8554119afba1ba3f4bbdfca67fb92700c858a804faf8bae5b3d8e21955bf52cdf3ad";
pub const PROVIDER_VERSION: &str = "6.25.0";
/// Where `cargo xtask test` tells the tests the reduced schema is.
pub const SCHEMA_VAR: &str = "FILEPIPE_PROVIDER_SCHEMA";

/// Every resource and data source of the provider.
#[derive(Debug, Serialize, Deserialize)]
pub struct Schema {
    pub provider_version: String,
    pub resources: BTreeMap<String, BlockSchema>,
    pub data_sources: BTreeMap<String, BlockSchema>,
}

/// The body of a resource, data source or nested block.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BlockSchema {
    pub arguments: BTreeMap<String, Argument>,
    /// Attributes a reference may read (`aws_x.name.<attribute>`): arguments and computed
    /// attributes alike. Empty for nested blocks.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub attributes: BTreeSet<String>,
    /// Nested deeper than the reduction follows (WAF rule statements): not checked.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchecked: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Argument {
    pub required: bool,
    pub form: Form,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nested: Option<BlockSchema>,
}

/// How an argument is written in HCL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `name = value`.
    Attribute,
    /// `name { ... }`.
    Block,
    /// An attribute of object type that the provider also accepts as blocks
    /// (`aws_security_group`'s `ingress`, for one).
    Either,
}

/// The reduced schema's path, downloading and reducing the package first if needed.
pub fn ensure(cx: &Context) -> Result<PathBuf> {
    let dir = cx.root.join("target").join("provider-schema");
    let schema_path = dir.join(format!("aws-provider-{PROVIDER_VERSION}.json"));
    if schema_path.is_file() {
        return Ok(schema_path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let tarball = dir.join("provider-aws.tgz");
    if !tarball.is_file() || sha512_hex(&tarball)? != PACKAGE_SHA512 {
        // Even under --dry-run: a cache under target/, not a change to any environment.
        cx.step(format!("download {PACKAGE_URL} (36 MB, once)"));
        block_on(download(PACKAGE_URL, &tarball))?;
        let found = sha512_hex(&tarball)?;
        if found != PACKAGE_SHA512 {
            let _ = std::fs::remove_file(&tarball);
            bail!(
                "{PACKAGE_URL} has SHA-512 {found}, not the pinned {PACKAGE_SHA512}; refusing to use it"
            );
        }
    }
    cx.step("reduce the provider schema (.jsii, once)");
    let jsii = read_from_tarball(&tarball, "package/.jsii")?;
    let schema = reduce(&jsii).context("reading the .jsii of @cdktf/provider-aws")?;
    let partial = schema_path.with_extension("json.partial");
    std::fs::write(&partial, serde_json::to_vec(&schema)?)
        .with_context(|| format!("writing {}", partial.display()))?;
    std::fs::rename(&partial, &schema_path)
        .with_context(|| format!("writing {}", schema_path.display()))?;
    eprintln!(
        "    {} resources and {} data sources of hashicorp/aws {PROVIDER_VERSION} in {}",
        schema.resources.len(),
        schema.data_sources.len(),
        schema_path.display()
    );
    Ok(schema_path)
}

pub fn load(path: &Path) -> Result<Schema> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))
}

async fn download(url: &str, to: &Path) -> Result<()> {
    let response = reqwest::get(url)
        .await
        .with_context(|| format!("GET {url}"))?;
    ensure!(
        response.status().is_success(),
        "GET {url} answered {}",
        response.status()
    );
    let bytes = response
        .bytes()
        .await
        .with_context(|| format!("reading {url}"))?;
    std::fs::write(to, &bytes).with_context(|| format!("writing {}", to.display()))
}

fn sha512_hex(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha512::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex::encode(hasher.finalize()))
}

/// One member of a gzipped tar archive (ustar headers; pax extension headers skipped).
fn read_from_tarball(path: &Path, member: &str) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut archive = flate2::read::GzDecoder::new(std::io::BufReader::new(file));
    let mut header = [0u8; 512];
    loop {
        archive
            .read_exact(&mut header)
            .with_context(|| format!("{member} not found in {}", path.display()))?;
        if header.iter().all(|&b| b == 0) {
            bail!("{member} not found in {}", path.display());
        }
        let field = |range: std::ops::Range<usize>| {
            let bytes = &header[range];
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            String::from_utf8_lossy(&bytes[..end]).trim().to_string()
        };
        let size = u64::from_str_radix(&field(124..136), 8)
            .with_context(|| format!("a corrupt tar header in {}", path.display()))?;
        let name = match field(345..500) {
            prefix if prefix.is_empty() => field(0..100),
            prefix => format!("{prefix}/{}", field(0..100)),
        };
        let padded = size.div_ceil(512) * 512;
        if name == member && matches!(header[156], b'0' | 0) {
            let mut data = Vec::with_capacity(size as usize);
            (&mut archive).take(size).read_to_end(&mut data)?;
            return Ok(data);
        }
        std::io::copy(&mut (&mut archive).take(padded), &mut std::io::sink())?;
    }
}

/// The parts of a jsii assembly the reduction reads.
#[derive(Deserialize)]
struct Assembly {
    types: BTreeMap<String, JsiiType>,
}

#[derive(Deserialize)]
struct JsiiType {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    base: Option<String>,
    #[serde(default)]
    docs: Docs,
    #[serde(default)]
    properties: Vec<Property>,
    #[serde(default)]
    initializer: Option<Initializer>,
}

#[derive(Deserialize)]
struct Initializer {
    #[serde(default)]
    parameters: Vec<Parameter>,
}

#[derive(Deserialize)]
struct Parameter {
    name: String,
    #[serde(rename = "type")]
    kind: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct Docs {
    #[serde(default)]
    summary: String,
    #[serde(default)]
    remarks: String,
}

#[derive(Deserialize)]
struct Property {
    name: String,
    #[serde(default)]
    optional: bool,
    #[serde(default, rename = "static")]
    is_static: bool,
    #[serde(default)]
    docs: Docs,
    #[serde(rename = "type")]
    kind: serde_json::Value,
}

/// From the jsii assembly to the schema: a resource class takes a config struct of its
/// arguments; a property documented "x block." is a nested block, any other documents its
/// HCL name in its registry link (`...#hcl_name ...`).
fn reduce(jsii: &[u8]) -> Result<Schema> {
    let assembly: Assembly = serde_json::from_slice(jsii)?;
    let mut schema = Schema {
        provider_version: PROVIDER_VERSION.to_string(),
        resources: BTreeMap::new(),
        data_sources: BTreeMap::new(),
    };
    for (fqn, class) in &assembly.types {
        let into = match (class.kind.as_str(), class.base.as_deref()) {
            ("class", Some("cdktf.TerraformResource")) => &mut schema.resources,
            ("class", Some("cdktf.TerraformDataSource")) => &mut schema.data_sources,
            _ => continue,
        };
        let Some(type_name) = linked_name(&class.docs.summary, " aws_") else {
            continue;
        };
        // The constructor's `config` parameter (usually `FooConfig`, `FooConfigA` on clashes).
        let config = class
            .initializer
            .iter()
            .flat_map(|i| &i.parameters)
            .find(|p| p.name == "config")
            .and_then(|p| struct_fqn(&p.kind))
            .and_then(|config| assembly.types.get(config))
            .with_context(|| format!("{fqn} has no config struct"))?;
        let mut block = reduce_struct(&assembly, config, 0)?;
        // Getters of the class: what a reference can read (camelCase back to snake_case).
        block.attributes = class
            .properties
            .iter()
            .filter(|p| !p.is_static && !p.name.ends_with("Input"))
            .map(|p| snake_case(&p.name))
            .chain(block.arguments.keys().cloned())
            .collect();
        into.insert(format!("aws_{type_name}"), block);
    }
    ensure!(
        schema.resources.len() > 1000 && schema.data_sources.len() > 400,
        "the .jsii yielded only {} resources and {} data sources",
        schema.resources.len(),
        schema.data_sources.len()
    );
    Ok(schema)
}

/// Blocks nested deeper than this are left unchecked: only WAF's rule statements go further,
/// and following them all multiplies the schema's size.
const MAX_DEPTH: usize = 8;

fn reduce_struct(assembly: &Assembly, ty: &JsiiType, depth: usize) -> Result<BlockSchema> {
    let mut block = BlockSchema::default();
    if depth > MAX_DEPTH {
        block.unchecked = true;
        return Ok(block);
    }
    for property in &ty.properties {
        let is_block = property.docs.summary.ends_with(" block.");
        let docs = format!("{} {}", property.docs.remarks, property.docs.summary);
        let name = linked_name(&docs, "#")
            .map(str::to_string)
            .unwrap_or_else(|| snake_case(&property.name));
        let struct_type = struct_fqn(&property.kind).and_then(|f| assembly.types.get(f));
        let (form, nested) = match (is_block, struct_type) {
            (true, Some(nested)) => (
                Form::Block,
                Some(reduce_struct(assembly, nested, depth + 1)?),
            ),
            // Blocks too intricate for cdktf are typed `any` (QuickSight's definitions).
            (true, None) => (
                Form::Block,
                Some(BlockSchema {
                    unchecked: true,
                    ..BlockSchema::default()
                }),
            ),
            (false, Some(nested)) if nested.kind == "interface" => (
                Form::Either,
                Some(reduce_struct(assembly, nested, depth + 1)?),
            ),
            (false, _) => (Form::Attribute, None),
        };
        block.arguments.insert(
            name,
            Argument {
                required: !property.optional,
                form,
                nested,
            },
        );
    }
    Ok(block)
}

/// `...docs/resources/s3_bucket aws_s3_bucket}` gives `s3_bucket` after " aws_"; a property's
/// `...#target_prefix S3BucketLogging#target_prefix}` gives `target_prefix` after "#".
fn linked_name<'a>(docs: &'a str, marker: &str) -> Option<&'a str> {
    let link = &docs[docs.find("{@link ")?..];
    let start = link.find(marker)? + marker.len();
    let rest = &link[start..];
    let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    (end > 0).then(|| &rest[..end])
}

/// The struct a property's type names, through unions and collections.
fn struct_fqn(kind: &serde_json::Value) -> Option<&str> {
    if let Some(fqn) = kind["fqn"].as_str() {
        return (fqn != "cdktf.IResolvable").then_some(fqn);
    }
    if let Some(types) = kind["union"]["types"].as_array() {
        return types.iter().find_map(struct_fqn);
    }
    kind.get("collection")
        .and_then(|c| c.get("elementtype"))
        .and_then(struct_fqn)
}

fn snake_case(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_registry_links() {
        let summary = "Represents a {@link https://registry.terraform.io/providers/hashicorp/aws/6.25.0/docs/resources/s3_bucket_logging aws_s3_bucket_logging}.";
        assert_eq!(linked_name(summary, " aws_"), Some("s3_bucket_logging"));
        let property = "Docs at Terraform Registry: {@link https://registry.terraform.io/providers/hashicorp/aws/6.25.0/docs/resources/instance#user_data_replace_on_change Instance#user_data_replace_on_change}.";
        assert_eq!(
            linked_name(property, "#"),
            Some("user_data_replace_on_change")
        );
        assert_eq!(linked_name("no link here", "#"), None);
        assert_eq!(snake_case("ipv6CidrBlock"), "ipv6_cidr_block");
        assert_eq!(snake_case("arn"), "arn");
    }
}
