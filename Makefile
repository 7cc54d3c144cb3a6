.PHONY: demo test check bench fuzz
demo:  ## run the worker, a reference provider and a sample call
	scripts/demo
test:  ## install what is needed, lint, type-check and run all tests
	scripts/test
check:
	scripts/check
bench:
	scripts/bench
fuzz:  ## the parsers' property-based fuzzing, 20,000 inputs per property (CI runs 200)
	scripts/bootstrap && HYPOTHESIS_PROFILE=fuzz PYTHONSAFEPATH=1 .venv/bin/pytest -q -p no:cacheprovider \
		--hypothesis-show-statistics tests/unit/test_parser_properties.py
