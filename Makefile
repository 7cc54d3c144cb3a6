.PHONY: demo test check bench fuzz
demo:  ## run the worker, a reference provider and a sample call
	scripts/demo
test:  ## install what is needed, lint, type-check and run all tests
	scripts/test
check:  ## lint, type-check and the import layers (installs what is needed first)
	scripts/bootstrap && scripts/check
bench:
	scripts/bench
fuzz:  ## property-based fuzzing of the parsers (20,000 inputs each) and the data plane's framing (5,000)
	scripts/bootstrap && HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest -q -p no:cacheprovider \
		--hypothesis-show-statistics tests/unit/test_parser_properties.py tests/unit/test_relay_properties.py
