#!/bin/sh
# Echo: the request body comes back as the response.
exec cat
