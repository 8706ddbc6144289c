#!/usr/bin/env python3
"""Reference tokens for src/kafka/msk_iam.rs (its `reference_tokens_*` tests).

Runs Amazon's MSK IAM SASL signer (PyPI `aws-msk-iam-sasl-signer-python`, tested with 1.0.2
and botocore 1.44.8) with a frozen clock, fixed credentials and a fixed User-Agent, and prints
one line per case: `<case> <token> <expiry_ms>`. The Rust tests hold these outputs as fixed
strings, so CI needs neither Python nor the package. To regenerate:

    python3 -m venv /tmp/venv-msk
    /tmp/venv-msk/bin/pip install aws-msk-iam-sasl-signer-python
    /tmp/venv-msk/bin/python tests/msk_iam_reference.py

Only the library's private token builder is called (no network, no credential lookup): the
clock botocore's SigV4 signer reads (`botocore.auth.get_current_datetime`) and the signer's
User-Agent function are monkeypatched.
"""

import datetime

import botocore.auth
from botocore.credentials import Credentials

from aws_msk_iam_sasl_signer import MSKAuthTokenProvider as signer

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
# '/' and '+' in the secret and the session token exercise percent-encoding.
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjEXAMPLE//////////wEaCXVzLWVhc3QtMSJHMEUCIQD+abc/def=="

# (case, region, session token, frozen UTC time, User-Agent)
CASES = [
    ("no_session_token", "us-east-1", None,
     datetime.datetime(2024, 3, 1, 12, 34, 56), "capture-proxy/0.1.0"),
    ("session_token", "eu-central-1", SESSION_TOKEN,
     datetime.datetime(2024, 2, 29, 23, 59, 59), "capture-proxy/0.1.0"),
    ("user_agent_escaping", "ap-southeast-2", SESSION_TOKEN,
     datetime.datetime(2031, 12, 31, 0, 0, 1), "capture-proxy/1.2.3 (linux; x=1&y~z)"),
]


def main():
    construct = getattr(signer, "__construct_auth_token")
    for case, region, token, now, user_agent in CASES:
        # Bind loop values as defaults so each lambda returns this case's values.
        botocore.auth.get_current_datetime = lambda now=now: now
        setattr(signer, "__get_user_agent__", lambda ua=user_agent: ua)
        creds = Credentials(ACCESS_KEY, SECRET_KEY, token)
        auth_token, expiry_ms = construct(region, creds)
        print(case, auth_token, expiry_ms)


if __name__ == "__main__":
    main()
