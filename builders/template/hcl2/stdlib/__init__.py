"""Packer's HCL2 function library, one module per function family of Packer's documentation
(developer.hashicorp.com/packer/docs/templates/hcl_templates/functions): numeric, strings, collection, conversion,
encoding, filesystem, dates, crypto, network and contextual. Each module's ``FUNCTIONS`` table (or, where a
function needs the run's context, its factory) is gathered by :func:`builders.template.hcl2.functions.make_functions`.
"""
