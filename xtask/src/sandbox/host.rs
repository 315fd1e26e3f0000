//! The sandbox's `modules/host`: in the emulator's EC2, the same instance (Amazon Linux 2023
//! from the public SSM parameter, the instance profile, IMDSv2 only with one hop, an
//! encrypted gp3 root volume, the rendered user-data), security group (the service port from
//! the client CIDRs in, HTTPS out) and Elastic IP. Nothing runs on that instance: the local
//! service runs on this machine, installed by the same user-data (local_service.rs).

use anyhow::{Context as _, Result};
use aws_sdk_ec2::Client as Ec2;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, DomainType, EbsBlockDevice, Filter, HttpTokensState,
    IamInstanceProfileSpecification, InstanceMetadataEndpointState, InstanceMetadataOptionsRequest,
    InstanceMetadataTagsState, InstanceType, IpPermission, IpRange, ResourceType,
    RunInstancesMonitoringEnabled, Tag, TagSpecification, VolumeType,
};
use serde_json::{Map, Value};
use service::aws::AwsResultExt;
use sha2::{Digest, Sha256};

/// The host's settings, from the root module's variable defaults (`variables` in mod.rs).
pub struct HostSettings<'a> {
    pub name_prefix: &'a str,
    pub client_cidrs: Vec<String>,
    pub service_port: i32,
    pub instance_type: String,
    pub detailed_monitoring: bool,
    pub root_volume_size_gib: i32,
    pub ami_ssm_parameter: String,
    pub instance_profile_name: &'a str,
}

impl<'a> HostSettings<'a> {
    pub fn from_variables(
        vars: &Map<String, Value>,
        name_prefix: &'a str,
        instance_profile_name: &'a str,
        ami_ssm_parameter: String,
    ) -> Result<HostSettings<'a>> {
        let listen = vars["service_listen_address"]
            .as_str()
            .context("service_listen_address has no default")?;
        let port = listen
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .with_context(|| format!("no port in service_listen_address {listen}"))?;
        Ok(HostSettings {
            name_prefix,
            client_cidrs: serde_json::from_value(vars["client_cidrs"].clone())
                .context("client_cidrs")?,
            service_port: port,
            instance_type: vars["instance_type"]
                .as_str()
                .context("instance_type has no default")?
                .to_string(),
            detailed_monitoring: vars["detailed_monitoring"].as_bool().unwrap_or(true),
            root_volume_size_gib: vars["root_volume_size_gib"]
                .as_i64()
                .context("root_volume_size_gib has no default")?
                as i32,
            ami_ssm_parameter,
            instance_profile_name,
        })
    }

    fn name(&self) -> String {
        format!("{}-service", self.name_prefix)
    }
}

fn name_tag(resource: ResourceType, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key("Name").value(name).build())
        .build()
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// The Elastic IP, allocated before anything else of the host (as in the HCL, where the
/// bucket policies take its address without waiting for the instance). Returns its
/// allocation id and address.
pub async fn elastic_ip(ec2: &Ec2, settings: &HostSettings<'_>) -> Result<(String, String)> {
    let name = settings.name();
    let found = ec2
        .describe_addresses()
        .filters(filter("tag:Name", &name))
        .send()
        .await
        .aws_context("ec2:DescribeAddresses")?;
    let address = match found.addresses().first() {
        Some(address) => (
            address.allocation_id().map(str::to_string),
            address.public_ip().map(str::to_string),
        ),
        None => {
            let allocated = ec2
                .allocate_address()
                .domain(DomainType::Vpc)
                .tag_specifications(name_tag(ResourceType::ElasticIp, &name))
                .send()
                .await
                .aws_context("ec2:AllocateAddress")?;
            (
                allocated.allocation_id().map(str::to_string),
                allocated.public_ip().map(str::to_string),
            )
        }
    };
    match address {
        (Some(id), Some(ip)) => Ok((id, ip)),
        _ => anyhow::bail!("ec2:AllocateAddress returned no allocation id or address"),
    }
}

/// What the host became.
pub struct Host {
    pub instance_id: String,
    pub security_group_id: String,
}

/// Security group, instance and the Elastic IP's association. An instance with other
/// user-data is replaced, as `user_data_replace_on_change` does.
pub async fn provision(
    ec2: &Ec2,
    ssm: &aws_sdk_ssm::Client,
    settings: &HostSettings<'_>,
    user_data: &str,
    allocation_id: &str,
) -> Result<Host> {
    let name = settings.name();
    let vpcs = ec2
        .describe_vpcs()
        .filters(filter("isDefault", "true"))
        .send()
        .await
        .aws_context("ec2:DescribeVpcs")?;
    let vpc = vpcs
        .vpcs()
        .first()
        .and_then(|v| v.vpc_id())
        .context("the emulator has no default VPC")?
        .to_string();
    let subnets = ec2
        .describe_subnets()
        .filters(filter("vpc-id", &vpc))
        .filters(filter("default-for-az", "true"))
        .send()
        .await
        .aws_context("ec2:DescribeSubnets")?;
    let mut subnet_ids: Vec<&str> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id())
        .collect();
    subnet_ids.sort();
    let subnet = subnet_ids
        .first()
        .context("the default VPC has no default subnet")?
        .to_string();

    let security_group_id = security_group(ec2, settings, &vpc).await?;

    let ami = ssm
        .get_parameter()
        .name(&settings.ami_ssm_parameter)
        .send()
        .await
        .aws_context(format!("ssm:GetParameter {}", settings.ami_ssm_parameter))?
        .parameter()
        .and_then(|p| p.value())
        .context("the AMI parameter has no value")?
        .to_string();
    let root_device = ec2
        .describe_images()
        .image_ids(&ami)
        .send()
        .await
        .aws_context(format!("ec2:DescribeImages {ami}"))?
        .images()
        .first()
        .and_then(|i| i.root_device_name())
        .unwrap_or("/dev/xvda")
        .to_string();

    let digest = hex::encode(Sha256::digest(user_data.as_bytes()));
    let running = ec2
        .describe_instances()
        .filters(filter("tag:Name", &name))
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .aws_context("ec2:DescribeInstances")?;
    let mut instance_id = None;
    for instance in running.reservations().iter().flat_map(|r| r.instances()) {
        let same = instance
            .tags()
            .iter()
            .any(|t| t.key() == Some(USER_DATA_TAG) && t.value() == Some(digest.as_str()));
        let id = instance.instance_id().context("an instance without id")?;
        if same && instance_id.is_none() {
            instance_id = Some(id.to_string());
        } else {
            ec2.terminate_instances()
                .instance_ids(id)
                .send()
                .await
                .aws_context(format!("ec2:TerminateInstances {id}"))?;
        }
    }
    let instance_id = match instance_id {
        Some(id) => id,
        None => {
            use base64::Engine as _;
            let launched = ec2
                .run_instances()
                .image_id(&ami)
                .instance_type(InstanceType::from(settings.instance_type.as_str()))
                .min_count(1)
                .max_count(1)
                .subnet_id(&subnet)
                .security_group_ids(&security_group_id)
                .iam_instance_profile(
                    IamInstanceProfileSpecification::builder()
                        .name(settings.instance_profile_name)
                        .build(),
                )
                .monitoring(
                    RunInstancesMonitoringEnabled::builder()
                        .enabled(settings.detailed_monitoring)
                        .build(),
                )
                .ebs_optimized(true)
                .user_data(base64::engine::general_purpose::STANDARD.encode(user_data))
                .metadata_options(
                    InstanceMetadataOptionsRequest::builder()
                        .http_endpoint(InstanceMetadataEndpointState::Enabled)
                        .http_tokens(HttpTokensState::Required)
                        .http_put_response_hop_limit(1)
                        .instance_metadata_tags(InstanceMetadataTagsState::Disabled)
                        .build(),
                )
                .block_device_mappings(
                    BlockDeviceMapping::builder()
                        .device_name(root_device)
                        .ebs(
                            EbsBlockDevice::builder()
                                .encrypted(true)
                                .volume_type(VolumeType::Gp3)
                                .volume_size(settings.root_volume_size_gib)
                                .delete_on_termination(true)
                                .build(),
                        )
                        .build(),
                )
                .tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::Instance)
                        .tags(Tag::builder().key("Name").value(&name).build())
                        .tags(Tag::builder().key(USER_DATA_TAG).value(&digest).build())
                        .build(),
                )
                .send()
                .await
                .aws_context("ec2:RunInstances")?;
            launched
                .instances()
                .first()
                .and_then(|i| i.instance_id())
                .context("ec2:RunInstances returned no instance")?
                .to_string()
        }
    };
    ec2.associate_address()
        .allocation_id(allocation_id)
        .instance_id(&instance_id)
        .allow_reassociation(true)
        .send()
        .await
        .aws_context("ec2:AssociateAddress")?;
    Ok(Host {
        instance_id,
        security_group_id,
    })
}

/// Marks which user-data an instance was launched with, so a change replaces it.
const USER_DATA_TAG: &str = "filepipe:user-data-sha256";

/// The group with exactly the HCL's rules: the service port from each client CIDR, HTTPS out
/// (EC2's default allow-all egress rule removed).
async fn security_group(ec2: &Ec2, settings: &HostSettings<'_>, vpc: &str) -> Result<String> {
    // The HCL's name_prefix gets a suffix from Terraform; the sandbox's is fixed.
    let group_name = format!("{}-sandbox", settings.name());
    let found = ec2
        .describe_security_groups()
        .filters(filter("group-name", &group_name))
        .filters(filter("vpc-id", vpc))
        .send()
        .await
        .aws_context("ec2:DescribeSecurityGroups")?;
    if let Some(id) = found.security_groups().first().and_then(|g| g.group_id()) {
        return Ok(id.to_string());
    }
    let group_id = ec2
        .create_security_group()
        .group_name(&group_name)
        .description("filepipe service: the service port from client CIDRs in, HTTPS out")
        .vpc_id(vpc)
        .tag_specifications(name_tag(ResourceType::SecurityGroup, &settings.name()))
        .send()
        .await
        .aws_context("ec2:CreateSecurityGroup")?
        .group_id()
        .context("ec2:CreateSecurityGroup returned no id")?
        .to_string();
    ec2.revoke_security_group_egress()
        .group_id(&group_id)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("-1")
                .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
                .build(),
        )
        .send()
        .await
        .aws_context("ec2:RevokeSecurityGroupEgress")?;
    ec2.authorize_security_group_egress()
        .group_id(&group_id)
        .ip_permissions(
            IpPermission::builder()
                .ip_protocol("tcp")
                .from_port(443)
                .to_port(443)
                .ip_ranges(
                    IpRange::builder()
                        .cidr_ip("0.0.0.0/0")
                        .description("HTTPS to AWS APIs and package repositories")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .aws_context("ec2:AuthorizeSecurityGroupEgress")?;
    for cidr in &settings.client_cidrs {
        ec2.authorize_security_group_ingress()
            .group_id(&group_id)
            .ip_permissions(
                IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(settings.service_port)
                    .to_port(settings.service_port)
                    .ip_ranges(
                        IpRange::builder()
                            .cidr_ip(cidr)
                            .description(format!("filepipe API from {cidr}"))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .aws_context("ec2:AuthorizeSecurityGroupIngress")?;
    }
    Ok(group_id)
}
