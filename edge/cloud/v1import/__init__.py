# SPDX-License-Identifier: Apache-2.0
"""`edge cloud import-greengrass`: copy an account's Greengrass V1 groups to edge."""
