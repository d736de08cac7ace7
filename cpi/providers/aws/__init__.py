"""The AWS provider: EC2 instances, EBS volumes and AMIs through boto3 (real AWS or a moto server)."""
