"""`make demo` as a program: the plan of runs (`plan`), a runner that puts
independent runs side by side on the cores (`runner`), and the wall-time
report written into the results and the README (`timings`)."""
