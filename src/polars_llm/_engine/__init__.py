"""The online mode: run loop, writer, session; ``pace/`` holds rate control."""
