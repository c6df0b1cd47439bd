"""Coursework: student copies of minipeft and an autograder, from the reference code itself.

The regions a student writes are marked in the package's own files (``markers.py``
describes the two comment lines), so the exercises and the reference never drift apart.

    make.make_copy(out, only)      the student copy (``minipeft exercises make``)
    grade.grade(copy_dir)          the grading report (``minipeft exercises grade``)
    make.catalog()                 {id: Exercise} (``minipeft exercises list``)
    graded/test_<id>.py            each exercise's tests: independent references (naive loops,
                                   finite differences, properties), hints in their messages
    mutants.MUTANTS                classic mistakes, each failing its exercise (the test suite applies them)
"""
