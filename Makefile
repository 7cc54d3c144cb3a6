.PHONY: demo test check bench
demo:  ## run the worker, a reference provider and a sample call
	scripts/demo
test:  ## install what is needed, lint, type-check and run all tests
	scripts/test
check:
	scripts/check
bench:
	scripts/bench
