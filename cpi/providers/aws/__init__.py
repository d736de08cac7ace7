"""The AWS provider: EC2 instances, EBS volumes and AMIs through boto3 (real AWS or a moto server).

Modules: ``provider`` (``AWSProvider``: every CPI method), ``config`` (the ``aws`` section and cloud_properties
schemas; no boto3), ``clients`` (boto3 clients, the retried ``AwsApi.call``, bounded ``wait_for``), ``vms``
(create_vm's plan and steps, the agent settings as user-data), ``stemcells`` + ``import_steps`` (light and heavy
stemcells), ``volumes`` (EBS sizes and type rules), ``instance_types`` (calculate_vm_cloud_properties, NVMe disk
hints), ``tags`` (metadata as tags within AWS's limits).

A CPI config for it (JSON or YAML)::

    cloud:
      plugin: aws
      properties:
        aws:
          region: us-east-1
          endpoint: http://127.0.0.1:5000        # optional: one URL for EC2 and S3 (moto); ec2_endpoint/s3_endpoint
          access_key_id: ...                     # secret: redacted everywhere
          secret_access_key: ...                 # secret
          # or credentials_source: env_or_profile (no keys)
          default_key_name: bosh
          default_security_groups: [sg-0123...]  # ids or names (resolved in the subnet's VPC)
          max_retries: 8                         # attempts after the first; also retry_total_seconds (300)
          wait_timeout: 900                      # bound on every state wait; poll_interval 2
          images_bucket: my-images               # heavy stemcells only (S3 upload + ImportSnapshot)
        agent: {mbus: "nats://...", ntp: [...], blobstore: {provider: s3, options: {...}}}

VM cloud_properties: ``instance_type`` (required), ``availability_zone``, ``security_groups``, ``key_name``,
``iam_instance_profile``, ``placement_group``, ``tenancy``, ``auto_assign_public_ip``, ``root_disk`` and
``ephemeral_disk`` (``size`` MiB, ``type``, ``iops``, ``throughput``, ``encrypted``, ``kms_key_arn``;
ephemeral also ``use_instance_storage``). Network cloud_properties: ``subnet`` (required), ``security_groups``.
Disk cloud_properties: ``type`` (gp3 default), ``iops``, ``throughput``, ``encrypted``, ``kms_key_arn``.
"""
