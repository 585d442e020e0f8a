"""Release bundles: what an app team receives for one platform, and the tools that check it.

A bundle is a directory and a deterministic `.tar.gz` of it: every verified variant (artifact,
`contract.json`, golden vectors, client code generated from the contract), the model card, the
verification report, `provenance.json` and `SHA256SUMS`. `speechport verify-bundle` checks one;
`speechport stream` is the reference client that drives any artifact or bundle in real time.
"""
