"""What is sent: the request spec, inputs, keys, structured output, templates."""
