import XCTest

@testable import CSPSession

final class HopFrameTests: XCTestCase {}
