"""The V1 "Working with secret resources" page's JSON, verbatim, shared by the tests."""

from __future__ import annotations

# The secret resource and the function of the page, verbatim.
REFERENCE_RESOURCE_JSON = """
{
    "Id": "my-resource-id",
    "Name": "MySecretResource",
    "ResourceDataContainer": {
        "SecretsManagerSecretResourceData": {
            "ARN": "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-SomeSecret-KUj89s",
            "AdditionalStagingLabelsToDownload": [
                "Label1",
                "Label2"
            ]
        }
    }
}
"""  # noqa: E501 - verbatim from the documentation
REFERENCE_FUNCTION_JSON = """
{
    "Id": "MyLambdaFunction",
    "FunctionArn": "arn:aws:lambda:us-west-2:123456789012:function:myFunction:1",
    "FunctionConfiguration": {
        "Pinned": false,
        "MemorySize": 16384,
        "Timeout": 10,
        "Environment": {
            "ResourceAccessPolicies": [
                {
                    "ResourceId": "MyApiKey",
                    "Permission": "ro"
                }
            ],
            "AccessSysfs": true
        }
    }
}
"""
REFERENCE_ARN = "arn:aws:secretsmanager:us-west-2:123456789012:secret:greengrass-SomeSecret-KUj89s"

# The page's `create-function-definition --initial-version`, as JSON of the same content.
REFERENCE_FUNCTIONS = '{"Functions": [' + REFERENCE_FUNCTION_JSON + "]}"
