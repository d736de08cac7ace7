"""Go's ``text/template`` engine as Packer's legacy JSON templates use it: lexer, parser and the Go
standard-library formatting the functions print with. The Packer functions and rendering live in
:mod:`builders.template.functions`."""
