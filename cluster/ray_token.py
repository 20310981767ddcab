"""Ray's auth token from AWS Secrets Manager, on stdout: what cluster/aws.yaml's start commands put in
RAY_AUTH_TOKEN on every node, so that the token is never in a file (docs/cluster.md, "AWS").

    python cluster/ray_token.py REGION

Reads the secret ``dualcam/ray-auth-token`` with the node's instance profile (cluster/iam/ray-token.json);
exits non-zero, printing nothing, when it cannot.
"""

import sys

import boto3

SECRET_ID = "dualcam/ray-auth-token"


def main(region: str) -> int:
    secret = boto3.client("secretsmanager", region_name=region).get_secret_value(SecretId=SECRET_ID)
    sys.stdout.write(secret["SecretString"])
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
